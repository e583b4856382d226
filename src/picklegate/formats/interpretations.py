"""Every way a real loader could read a file, in one ordered table, and the dispatcher over it.

A file is dangerous if ANY loader a user might call on it would import a global, so its
verdict is the union of these readings:

1. The primary reading: the first row of :data:`INTERPRETATIONS` whose detector accepts the
   bytes (and whose reader does not answer :class:`NotThisFormat`). Container readers recurse
   into their members through the dispatcher the :class:`Context` carries.
2. Pickle from byte 0: ``pickle.load``, ``joblib.load`` (non-zip files), ``numpy.load`` with
   ``allow_pickle`` (neither npy nor zip), ``pandas.read_pickle`` and torch's non-zip path all
   unpickle from the first byte, whatever else the bytes are. Imports reached that way are
   findings, and a container that is also such a pickle is a polyglot.
3. A zip found from the end: ``zipfile`` (numpy's ``.npz``, pandas' ``.zip``) opens an archive
   by its end record wherever it starts, so a zip glued after another format opens too.
"""
from __future__ import annotations

from dataclasses import dataclass

from picklegate.findings import Finding, FindingKind, GlobalRef
from picklegate.formats import archive, compression, detect, inert, numpy, pickle, tar
from picklegate.formats.base import Analysis, Context, NotThisFormat, Reader
from picklegate.formats.detect import Detector, by_head, by_magic
from picklegate.formats.joblib import JoblibHook
from picklegate.limits import DEFAULT_LIMITS, Limits
from picklegate.machine import Buffer, Collector, analyse_pickles
from picklegate.names import looks_importable

@dataclass(frozen=True)
class Interpretation:
    name: str             # what the table calls the reading (readers name the format found)
    detect: Detector
    read: Reader
    loaders: str          # who reads bytes this way: why the row exists


# First match wins for the primary reading. Formats with a magic number come first; the ones
# that only a few plausible bytes announce (lzma 'alone', zlib) come after the ones with
# structure, and pickle, the format every loader falls back to, comes last.
INTERPRETATIONS: tuple[Interpretation, ...] = (
    Interpretation("zip", by_magic(*detect.ZIP_MAGICS), archive.read_zip,
                   "torch.load (torch.save since 1.6, TorchScript), numpy.load (.npz), "
                   "pandas (.zip)"),
    Interpretation("npy", by_magic(detect.NPY_MAGIC), numpy.read_npy, "numpy.load"),
    Interpretation("gzip", by_magic(detect.GZIP_MAGIC), compression.read_gzip,
                   "joblib.load, pandas (.gz), gzip.open"),
    Interpretation("bz2", by_head(detect.is_bz2), compression.read_bz2,
                   "joblib.load, pandas (.bz2)"),
    Interpretation("xz", by_magic(detect.XZ_MAGIC), compression.read_xz,
                   "joblib.load, pandas (.xz)"),
    Interpretation("lz4", by_magic(detect.LZ4_MAGIC), compression.read_lz4,
                   "joblib.load (with lz4 installed)"),
    Interpretation("zstd", by_head(detect.is_zstd), compression.read_zstd,
                   "pandas.read_pickle (.zst, with zstandard installed)"),
    Interpretation("zfile", by_head(detect.is_zfile), compression.read_zfile,
                   "joblib.load (the 'ZF' format of joblib < 0.10)"),
    Interpretation("lfs-pointer", by_magic(detect.LFS_PREFIX), inert.read_lfs_pointer,
                   "git: the real content lives in LFS storage"),
    Interpretation("tar", detect.is_tar, tar.read_tar,
                   "torch.load (torch < 0.4 tar checkpoints), pandas (.tar)"),
    Interpretation("safetensors", detect.is_safetensors, inert.read_safetensors,
                   "safetensors (never unpickles)"),
    Interpretation("lzma", by_head(detect.is_lzma_alone), compression.read_lzma,
                   "joblib.load ('lzma' compressor), pandas (.xz reads .lzma too)"),
    Interpretation("zlib", by_head(detect.is_zlib), compression.read_zlib,
                   "joblib.load ('zlib' compressor, prefix 0x78)"),
    Interpretation("pickle", detect.is_pickle, pickle.read_pickle,
                   "pickle.load, joblib.load, numpy.load, pandas.read_pickle, torch.load"),
    Interpretation("unknown", detect.anything, inert.read_unknown, "nothing"),
)

# Readings that already unpickled from the first byte ("unknown": a pickle reading that
# reached no import, or bytes whose first byte no unpickler accepts).
PICKLE_READINGS = frozenset({"pickle", "joblib", "torch-legacy", "data", "unknown"})


def new_context(limits: Limits = DEFAULT_LIMITS) -> Context:
    """The context of a top-level file, carrying the dispatcher."""
    return Context(limits=limits, dispatch=analyse_member)


def analyse_buffer(buf: Buffer, limits: Limits = DEFAULT_LIMITS,
                   analysis: Analysis | None = None) -> Analysis:
    """Analyse a whole top-level file under every interpretation, into ``analysis`` when given
    (scan.py passes its own, so what was found before a budget ran out is kept)."""
    ctx = new_context(limits)
    analysis = analysis if analysis is not None else Analysis()
    analysis.format = analyse_member(buf, 0, len(buf), ctx, analysis)
    _zip_from_end(buf, ctx, analysis)
    return analysis


def analyse_member(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    """The dispatcher: the primary reading of ``buf[start:end]``, then pickle from byte 0."""
    if ctx.depth > ctx.limits.max_depth:
        analysis.finding(ctx, FindingKind.LIMIT, start,
                         f"containers nested deeper than {ctx.limits.max_depth}; not analysed")
        return "nested"
    found = _primary(buf, start, end, ctx, analysis)
    analysis.scanned.append((id(buf), start, end, found))
    if found not in PICKLE_READINGS:
        _pickle_from_byte_zero(buf, start, end, ctx, analysis, found)
    return found


def _primary(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    for row in INTERPRETATIONS:
        if row.detect(buf, start, end):
            try:
                return row.read(buf, start, end, ctx, analysis)
            except NotThisFormat:
                continue
    raise AssertionError("the last interpretation accepts anything")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Pickle from byte 0


def _pickle_from_byte_zero(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis,
                           found: str) -> None:
    """Read the bytes as the pickle loaders would, and keep what they would really reach.

    A loader stops at the first opcode its unpickler raises on, and the plain loaders
    (pickle.load, joblib.load, pandas) raise at a persistent id, so only imports up to there
    count; names no module could carry are noise of bytes that are not a pickle. Malformation
    here is never a finding: the primary reading already judged these bytes.
    """
    reached: dict[GlobalRef, None] = {}
    unresolved: dict[Finding, None] = {}
    for hook in (None, JoblibHook()):     # pickle.load, and joblib's NumpyUnpickler
        part = analyse_pickles(buf, start, end, limits=ctx.limits, on_build=hook,
                               collector=ctx.collector())
        cut = _cut(part) - ctx.base       # reported offsets are member-relative
        reached.update((r, None) for r in part.imports
                       if r.offset <= cut and looks_importable(r.module, r.name))
        # An unresolved import AT the cut is the opcode the unpickler raised on. Where this
        # reading stopped on its own (a bound, a layout it cannot follow) before the loader
        # would, what comes after is unknown: that is a finding too (fail closed).
        unresolved.update((f, None) for f in part.findings if f.offset is not None and (
            (f.kind is FindingKind.UNRESOLVED and f.offset < cut)
            or (f.kind is FindingKind.LIMIT and f.offset <= cut)))
    if not reached and not unresolved:
        return
    analysis.out.imports.extend(reached)
    analysis.out.findings.extend(unresolved)
    names = ", ".join(sorted({r.dotted for r in reached})) or \
        "what this reading could not follow to its end"
    analysis.finding(ctx, FindingKind.ARCHIVE, start,
                     f"polyglot: this {found} data is also a pickle; read from its first byte "
                     f"(pickle.load, joblib.load, numpy.load, pandas.read_pickle or torch.load "
                     f"do that) it imports {names}")


def _cut(part: Collector) -> int:
    """Absolute offset of the last opcode a plain loader executes."""
    stops = [part.first_error] if part.first_error is not None else []
    stops += [offset for offset, _ in part.persistent_ids[:1]]
    return min(stops, default=1 << 62)


# ---------------------------------------------------------------------------------------------
# A zip found from the end


def _zip_from_end(buf: Buffer, ctx: Context, analysis: Analysis) -> None:
    """zipfile finds an archive by its end record, whatever precedes it. When a member the
    primary reading scanned holds that archive, it was read already (a tar whose last member
    is a checkpoint); otherwise the zip is glued on, and loaders disagree about the file."""
    if analysis.format in archive.ZIP_FORMATS:
        return
    where = archive.zip_from_end(buf, 0, len(buf))
    if where is None:
        return
    zip_start, zip_end = where
    holders = [(start, end, found) for key, start, end, found in analysis.scanned
               if key == id(buf) and start <= zip_start and zip_end <= end
               and (start, end) != (0, len(buf))]
    if any(start == zip_start and found in archive.ZIP_FORMATS for start, _, found in holders):
        return
    child = ctx.child("(appended zip)")
    if holders:
        analysis.notes.append(f"a zip archive inside member bytes at offset {zip_start} opens "
                              "with zipfile from the end of the file; its members were scanned")
    else:
        analysis.finding(ctx, FindingKind.ARCHIVE, zip_start,
                         f"a zip archive is appended to this {analysis.format} file; zip readers "
                         "open it, so its members were scanned too")
    archive.read_zip(buf, 0, len(buf), child, analysis)
