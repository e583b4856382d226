"""Codecs as the loaders read them: zstd (pandas.read_pickle), .lzma headers by liblzma's
FORMAT_AUTO rules (pandas, joblib), joblib's pre-0.10 ZF files, and zlib only where joblib
detects it. Benign real artefacts scan clean; planted payloads are named with kind, global and
member. Real loaders appear only as oracles over the compressed layer (lzma.decompress,
zstandard, joblib's read_zfile, which decompresses and never unpickles)."""
from __future__ import annotations

import io
import lzma
import struct
import sys
import tracemalloc
import zlib
from pathlib import Path

import pytest

from picklegate.findings import Status
from picklegate.formats.detect import is_lzma_alone, is_zlib, looks_like_pickle

from .build import GETCWD, evil_global, fixture, getcwd_pickle
from .conftest import scan, summary

NA, MALF, LIMIT, UNSUP = "not-allowed", "malformed", "limit-exceeded", "unsupported"
GADGET = "gadget"  # the kind of a planted posix.system
SYSTEM = "posix.system"
CWD = ".".join(GETCWD)
EVIL = evil_global()
BENIGN = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s."     # pickle.dumps({'a': 1}, 2)
VENDORED = Path(__file__).resolve().parent.parent / "fixtures" / "vendored"


# ---------------------------------------------------------------------------------------------
# zstd

import zstandard  # noqa: E402 - the test extra installs it
CCTX = zstandard.ZstdCompressor()


def zst(data: bytes) -> bytes:
    return CCTX.compress(data)


def skippable(payload: bytes, nibble: int = 0) -> bytes:
    return struct.pack("<II", 0x184D2A50 + nibble, len(payload)) + payload


def pandas_reads(data: bytes) -> bytes:
    """What pandas.read_pickle's zstandard.open(f, 'rb') hands to pickle.load (the oracle)."""
    with zstandard.open(io.BytesIO(data), "rb") as f:
        return f.read()


def test_pandas_zstd_pickle_is_clean_and_a_planted_one_is_named(tmp_path):
    import pandas as pd
    real = fixture("pandas_arrays.pkl.zst")
    result = scan(real, path="frame.pkl.zst", presets=["numpy"])
    assert (result.format, result.status, result.findings) == ("pickle+zstd", Status.CLEAN, ())
    from .build import evil_object

    pd.to_pickle({"x": evil_object()}, str(tmp_path / "evil.pkl.zst"))
    result = scan((tmp_path / "evil.pkl.zst").read_bytes(), path="evil.pkl.zst")
    assert result.format == "pickle+zstd"
    assert summary(result) == {(GADGET, CWD, "zstd")}


@pytest.mark.parametrize("data", [
    pytest.param(zst(EVIL), id="one-frame"),
    pytest.param(zst(BENIGN) + zst(EVIL), id="second-frame-second-pickle"),
    pytest.param(zst(EVIL[:7]) + zst(EVIL[7:]), id="pickle-split-across-frames"),
    pytest.param(skippable(b"meta") + zst(EVIL), id="skippable-first"),
    pytest.param(skippable(b"x" * 300, 15) + zst(EVIL), id="skippable-0x5F"),
    pytest.param(zst(EVIL[:7]) + skippable(b"xx", 3) + zst(EVIL[7:]), id="skippable-between"),
    pytest.param(zst(b"") + zst(EVIL), id="empty-frame-first"),
])
def test_zstd_frames_are_read_as_pandas_reads_them(data):
    assert EVIL in pandas_reads(data)        # the loader sees the payload...
    result = scan(data, path="m.pkl.zst")
    assert result.format == "pickle+zstd"
    assert summary(result) == {(GADGET, SYSTEM, "zstd")}   # ...and so does picklegate


def test_zstd_trailing_garbage_is_malformed_and_the_frame_still_scanned():
    data = zst(EVIL) + b"garbage"
    result = scan(data, path="m.pkl.zst")
    assert summary(result) == {(GADGET, SYSTEM, "zstd"), (MALF, None, None)}
    malformed = next(f for f in result.findings if f.kind.value == MALF)
    assert malformed.offset == len(zst(EVIL))


def test_truncated_zstd_is_malformed():
    full = zst(EVIL * 40)
    assert summary(scan(full[:len(full) // 2])) == {(MALF, None, None)}


def _rle_bomb(blocks: int) -> bytes:
    """A frame of RLE blocks, each regenerating 128 KiB from 4 bytes."""
    header = b"\x28\xb5\x2f\xfd" + bytes([0x00, 7 << 3])       # no FCS, window 128 KiB
    block = struct.pack("<I", (1 << 1) | (131072 << 3))[:3] + b"A"
    last = struct.pack("<I", 1 | (1 << 1) | (131072 << 3))[:3] + b"A"
    return header + block * (blocks - 1) + last


def test_zstd_bomb_hits_the_limit_in_bounded_memory():
    bomb = _rle_bomb(400)                                     # 1.6 KB -> 52 MB
    assert len(bomb) < 2000
    tracemalloc.start()
    try:
        result = scan(bomb, path="m.pkl.zst", max_expanded_bytes=4_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary(result) == {(LIMIT, None, None)}
    assert peak < 24_000_000, peak


def test_zstd_frame_output_never_exceeds_what_was_asked():
    from picklegate.formats.compression import ZstdFrame

    frame = ZstdFrame(zstandard)
    bomb = _rle_bomb(50)
    sizes = [len(frame.decompress(bomb, 1000))]
    while not frame.eof:
        sizes.append(len(frame.decompress(b"", 300_000)))
    assert sizes[0] == 1000 and max(sizes[1:]) == 300_000
    assert sum(sizes) == 50 * 131072 and frame.unused_data == b""


def test_skippable_frame_that_is_also_a_pickle():
    # b'U*M\x18' is a skippable-frame magic and SHORT_BINSTRING of 42 bytes: the frame hides
    # the pickle's call from zstd readers, pickle.load runs it and stops before the real frame.
    tail = b"0" + evil_global(protocol=0)
    size = 44 - 8 + len(tail)
    data = b"U*M\x18" + struct.pack("<I", size) + b"s" * 36 + tail + zst(BENIGN)
    assert pandas_reads(data) == BENIGN
    result = scan(data, path="m.pkl")
    assert result.format == "pickle+zstd"
    assert summary(result) == {(GADGET, SYSTEM, None), ("archive-anomaly", None, None)}
    assert "polyglot: this pickle+zstd data is also a pickle" in result.findings[0].message


def test_zstd_without_the_zstandard_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)
    result = scan(zst(EVIL), path="m.pkl.zst")
    assert result.format == "zstd"
    assert summary(result) == {(UNSUP, None, None)}
    assert "pip install 'picklegate[zstd]'" in result.findings[0].message


# ---------------------------------------------------------------------------------------------
# .lzma ("alone") headers: liblzma's FORMAT_AUTO rules


def _auto_accepts(header: bytes) -> bool:
    try:
        lzma.LZMADecompressor(format=lzma.FORMAT_AUTO).decompress(header)
    except lzma.LZMAError:
        return False
    return True


UNKNOWN = b"\xff" * 8
HEADERS = [
    bytes([props]) + struct.pack("<I", dict_size) + size
    for props in (0x00, 0x5D, 0x09, 0x24, 0x2C, 0x2D, 0x51, 0x63, 0xE0, 0xE1, 0xFF)
    for dict_size in (0, 1, 2, 3, 5, 6, 7, 12, 24, 4096, 6144, 7168, 1 << 20, 3 << 19)
    for size in (UNKNOWN, struct.pack("<Q", 0), struct.pack("<Q", 2**38 - 1),
                 struct.pack("<Q", 2**38), struct.pack("<Q", 2**64 - 2))
]


def test_lzma_alone_predicate_is_liblzmas():
    """For every header: is_lzma_alone == whether lzma's FORMAT_AUTO decoder accepts it."""
    disagree = [h.hex() for h in HEADERS if is_lzma_alone(h + b"\x00") != _auto_accepts(h)]
    assert disagree == []
    assert sum(map(_auto_accepts, HEADERS)) > 100      # the table exercises both answers


def test_lzma_alone_uint32_max_dictionary():
    # liblzma's one exception to the 2^n / 2^n + 2^(n-1) rule (not decoded here: 4 GiB dict)
    assert is_lzma_alone(b"\x5d\xff\xff\xff\xff" + UNKNOWN)
    assert not is_lzma_alone(b"\x5d\xfe\xff\xff\xff" + UNKNOWN)


def _alone(data: bytes, dict_field: int) -> bytes:
    comp = lzma.compress(data, format=lzma.FORMAT_ALONE,
                         filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 4096}])
    return comp[:1] + struct.pack("<I", dict_field) + comp[5:]


@pytest.mark.parametrize("dict_field", [1, 3, 4096, 1 << 16])
def test_lzma_alone_with_a_small_dictionary(dict_field):
    data = _alone(EVIL, dict_field)
    assert lzma.decompress(data) == EVIL            # what LZMAFile(FORMAT_AUTO) reads
    result = scan(data, path="m.pkl.lzma")
    assert result.format == "pickle+lzma"
    assert summary(result) == {(GADGET, SYSTEM, "lzma")}


def test_lzma_alone_header_on_a_pickle_falls_through_to_the_pickle():
    # LONG4 of length 0 (dict size 0, which liblzma accepts), POP, NONE, POP, BININT 5 (its
    # high bytes keep the "uncompressed size" under 2**38), POP, then a call of posix.system.
    data = b"\x8b\x00\x00\x00\x00" + b"0N0J\x05\x00\x00\x00" + b"0" + EVIL
    assert is_lzma_alone(data[:64]) and looks_like_pickle(data[:64])
    with pytest.raises(lzma.LZMAError):
        lzma.decompress(data)
    result = scan(data, path="m.pkl")
    assert result.format == "pickle"
    assert summary(result) == {(GADGET, SYSTEM, None)}


@pytest.mark.parametrize("first, second, codec", [
    (lzma.FORMAT_XZ, lzma.FORMAT_ALONE, "xz"),
    (lzma.FORMAT_ALONE, lzma.FORMAT_XZ, "lzma"),
    (lzma.FORMAT_ALONE, lzma.FORMAT_ALONE, "lzma"),
])
def test_lzma_streams_chain_as_lzmafile_reads_them(first, second, codec):
    data = lzma.compress(BENIGN, format=first) + lzma.compress(EVIL, format=second)
    with lzma.LZMAFile(io.BytesIO(data)) as f:
        assert f.read() == BENIGN + EVIL
    result = scan(data, path="m.pkl.xz")
    assert result.format == f"pickle+{codec}"
    assert summary(result) == {(GADGET, SYSTEM, codec)}


# ---------------------------------------------------------------------------------------------
# joblib ZF files

ZF_FILES = sorted(p.name for p in VENDORED.glob("joblib_*_compressed_pickle_*.gz"))
MATRIX = "numpy.matrixlib.defmatrix.matrix"      # NumPy 1.x's spelling of np.matrix


def zfile(payload: bytes, length: int | None = None, space: bool = False) -> bytes:
    """joblib.numpy_pickle_compat.write_zfile, with an optional wrong length / extra space."""
    field = hex(len(payload) if length is None else length).ljust(19).encode()
    return b"ZF" + field + (b" " if space else b"") + zlib.compress(payload, 1)


def test_vendored_zf_files_are_the_sources():
    import hashlib

    text = (VENDORED / "SOURCE.md").read_text(encoding="utf-8")
    assert len(ZF_FILES) == 3
    for name in ZF_FILES:
        digest = hashlib.sha256((VENDORED / name).read_bytes()).hexdigest()
        assert f"`{name}`" in text and digest in text


@pytest.mark.parametrize("name", ZF_FILES)
def test_real_zf_files_are_clean_with_numpy(name):
    from joblib.numpy_pickle_compat import read_zfile

    data = (VENDORED / name).read_bytes()
    inner = read_zfile(io.BytesIO(data))           # joblib's own reader: decompresses only
    # np.matrix pickled by NumPy 1.x names numpy.matrixlib.defmatrix.matrix, which the numpy
    # preset does not list (it lists numpy.matrix), so the policy must allow it by name.
    result = scan(data, path=name, presets=["numpy"], also_allow=[MATRIX])
    assert (result.format, result.status, result.findings) == ("pickle+zfile", Status.CLEAN, ())
    result = scan(data, path=name, presets=["numpy"])
    assert summary(result) == {(NA, MATRIX, "zfile")}
    assert result.findings[0].offset == inner.index(b"numpy.matrixlib.defmatrix") - 1


@pytest.mark.parametrize("space", [False, True])
def test_zf_with_a_malicious_pickle_is_named(space):
    from joblib.numpy_pickle_compat import read_zfile

    data = zfile(EVIL, space=space)
    assert read_zfile(io.BytesIO(data)) == EVIL
    result = scan(data, path="old.pkl")
    assert result.format == "pickle+zfile"
    assert summary(result) == {(GADGET, SYSTEM, "zfile")}


def test_zf_length_mismatch_is_malformed_and_still_scanned():
    result = scan(zfile(getcwd_pickle(), length=5), path="old.pkl")
    assert summary(result) == {(GADGET, CWD, "zfile"), (MALF, None, None)}


@pytest.mark.parametrize("field", [b"nothex".ljust(19), b"-0x5".ljust(19), b"0x5"])
def test_zf_unreadable_length_is_malformed(field):
    result = scan(b"ZF" + field + zlib.compress(EVIL), path="old.pkl")
    assert (result.format, summary(result)) == ("zfile", {(MALF, None, None)})


def test_zf_declared_length_is_never_preallocated():
    data = zfile(EVIL, length=2**64)
    tracemalloc.start()
    try:
        result = scan(data, path="old.pkl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary(result) == {(GADGET, SYSTEM, "zfile"), (MALF, None, None)}
    assert peak < 4_000_000, peak


def test_zf_bomb_hits_the_limit():
    data = zfile(bytes(5_000_000))
    result = scan(data, path="old.pkl", max_expanded_bytes=1_000_000)
    assert summary(result) == {(LIMIT, None, None)}


# ---------------------------------------------------------------------------------------------
# zlib: only joblib's prefix


def _rfc1950(h: bytes) -> bool:
    return h[0] & 0x0F == 8 and h[0] >> 4 <= 7 and (h[0] * 256 + h[1]) % 31 == 0


@pytest.mark.parametrize("data", [
    pytest.param(b"(S'a'\n1" + evil_global(protocol=0), id="MARK-STRING"),
    pytest.param(b"XG\x00\x00\x00" + b"g" * 71 + b"0" + evil_global(protocol=0),
                 id="BINUNICODE-71"),
    pytest.param(b"X\x85\x00\x00\x00" + b"g" * 133 + b"0" + evil_global(protocol=0),
                 id="BINUNICODE-133"),
])
def test_pickles_that_start_like_zlib_are_pickles(data):
    assert _rfc1950(data) and not is_zlib(data[:64])
    result = scan(data, path="m.pkl")
    assert result.format == "pickle"
    assert summary(result) == {(GADGET, SYSTEM, None)}


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_joblib_zlib_prefix_is_read(level):
    data = zlib.compress(EVIL, level)
    assert data[:1] == b"\x78"
    assert summary(scan(data, path="m.joblib.z")) == {(GADGET, SYSTEM, "zlib")}


def test_real_joblib_zlib_dump_still_reads():
    result = scan(fixture("sklearn_forest.joblib.z"), presets=["numpy", "sklearn"])
    assert (result.format, result.status) == ("joblib+zlib", Status.CLEAN)


def test_zlib_with_a_small_window_is_read_by_nothing():
    comp = zlib.compressobj(wbits=10)
    data = comp.compress(EVIL) + comp.flush()
    assert data[:1] == b"\x28"                      # CINFO 2: joblib does not detect it
    result = scan(data, path="m.pkl")
    # read as a pickle it stops before any import: not a pickle, and no global is named
    assert (result.format, summary(result)) == ("unknown", {("unknown-format", None, None)})


def _zip_lzma_without_end_marker(payload: bytes) -> bytes:
    """A zip LZMA member (method 14) whose raw LZMA1 data has no end marker (flag bit 1
    clear): zipfile reads it by its size. Made from zipfile's own member, minus the marker."""
    import io
    import zipfile

    from .build import RawZip

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_LZMA) as archive:
        archive.writestr("model.pkl", payload)
    info = zipfile.ZipFile(io.BytesIO(out.getvalue())).infolist()[0]
    raw = out.getvalue()
    names, extra = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + names + extra
    member = raw[start:start + info.compress_size - 5]          # the 5-byte end marker
    return RawZip().add("model.pkl", member, method=14, crc=zlib.crc32(payload)).bytes()


def test_zip_lzma_member_without_end_marker_is_read_to_its_size():
    import pickle

    clean = _zip_lzma_without_end_marker(pickle.dumps({"w": list(range(40))}, 2))
    result = scan(clean, presets=["builtins-safe"])
    assert [f for f in result.findings if f.kind.value == "malformed"] == []
    evil = _zip_lzma_without_end_marker(evil_global())
    assert (GADGET, SYSTEM, "model.pkl") in summary(scan(evil))
