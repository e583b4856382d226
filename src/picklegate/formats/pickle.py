"""Pickle streams (one or several concatenated), including joblib's interleaved arrays."""
from __future__ import annotations

import bisect

from picklegate.findings import FindingKind
from picklegate.formats.base import Analysis, Context
from picklegate.formats.detect import PICKLE_NAMES
from picklegate.formats.joblib import JoblibHook
from picklegate.formats.torch import first_value_is_magic, read_legacy
from picklegate.machine import PROTO_BYTE, Buffer, Collector, analyse_pickles
from picklegate.names import looks_importable


def read_pickle(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    if first_value_is_magic(buf, start, end):
        return read_legacy(buf, start, end, ctx, analysis)
    hook = JoblibHook()
    part = analyse_pickles(buf, start, end, limits=ctx.limits, on_build=hook,
                           collector=ctx.collector())
    if _is_stray_data(buf, start, end, ctx, part):
        return "data"
    if _reaches_no_import(part):
        _not_a_pickle(ctx, analysis, part)
        return "unknown"
    analysis.merge(part)
    if hook.arrays:
        _plain_pass(buf, start, end, ctx, analysis, hook.skipped)
        return "joblib"
    return "pickle"


def _is_stray_data(buf: Buffer, start: int, end: int, ctx: Context, part: Collector) -> bool:
    """Inside an archive, a member that merely starts with a protocol-0 opcode byte (torch's
    'byteorder' holds the text 'little', TorchScript's code/ holds Python source) and is not
    named like a pickle is data, unless reading it as a pickle completes a stream, finds an
    importable-looking name or an unresolved import. Nothing loads such members as pickles;
    these conditions still catch a real pickle hidden under an innocent name."""
    if ctx.top_level or (end > start and buf[start] == PROTO_BYTE):
        return False
    if (ctx.member or "").lower().endswith(PICKLE_NAMES):
        return False
    return (part.completed == 0
            and not any(looks_importable(r.module, r.name) for r in part.imports)
            and all(f.kind is FindingKind.MALFORMED for f in part.findings))


def _reaches_no_import(part: Collector) -> bool:
    """A stream that breaks off before any import, and completes none, cannot run code through
    any pickle loader: without a global nothing callable reaches REDUCE, BUILD or NEWOBJ.
    Not where pickle.py and _pickle part ways (a FRAME edge case): one of them reads on."""
    return (part.completed == 0 and not part.imports and not part.persistent_ids
            and part.divergences == 0
            and all(f.kind is FindingKind.MALFORMED for f in part.findings))


def _not_a_pickle(ctx: Context, analysis: Analysis, part: Collector) -> None:
    first = min(part.findings, key=lambda f: f.offset if f.offset is not None else -1)
    where = first.offset if first.offset is not None else 0
    analysis.out.findings.append(part.finding_value(
        FindingKind.UNKNOWN_FORMAT, where + ctx.base,
        f"not a pickle: a pickle loader stops at offset {where} ({first.message}) before "
        "it imports anything, so no loader can run code from it (set 'unknown_formats: "
        "allow' in the policy to accept such files)"))


def _plain_pass(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis,
                skipped: list[tuple[int, int]]) -> None:
    """A joblib file loaded with plain pickle.load parses the raw array bytes as opcodes. Real
    files fail at once (the padding-length byte is no opcode), but crafted array bytes could
    hide imports there: report every import or unresolved import that reading finds inside the
    skipped raw regions."""
    plain = analyse_pickles(buf, start, end, limits=ctx.limits, collector=ctx.collector())

    starts = [a for a, _ in skipped]          # sorted: the hook records them in stream order

    def in_raw(offset: int | None) -> bool:
        if offset is None:
            return False
        at = bisect.bisect_right(starts, offset + ctx.base) - 1
        return at >= 0 and offset + ctx.base < skipped[at][1]

    extra = [r for r in plain.imports if in_raw(r.offset)]
    analysis.out.imports.extend(extra)
    analysis.out.findings.extend(f for f in plain.findings
                                 if f.kind is FindingKind.UNRESOLVED and in_raw(f.offset))
    if extra:
        analysis.notes.append(f"{ctx.member or 'file'}: {len(extra)} import(s) hide in raw array "
                              "bytes: joblib.load skips them, plain pickle.load imports them")
