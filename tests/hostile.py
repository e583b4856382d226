"""Builders of hostile files (picklegate issue 9): decompression bombs, nested and huge zips,
deep pickles inside torch records, hostile names. Each is generated at the size asked for,
cheaply (a bomb repeats one compressed unit), and never committed.

Used by tests/test_hostile.py and by hand for the figures in the README's "Limits":
    PYTHONPATH=src python tests/hostile.py gzip_bomb 10737418240 > /tmp/bomb.gz
"""
from __future__ import annotations

import bz2
import io
import lzma
import struct
import sys
import tarfile
import zlib

from formats.build import LegacyTorch, RawZip, _global_ref, _text, torch_tar

UNIT = 64 << 20


def _repeat_streams(one: bytes, size: int) -> bytes:
    """Concatenated streams each decompressing to UNIT zeros: the loaders (and picklegate)
    read every stream of gzip, bz2, xz, lz4 and zstd files in turn."""
    return one * max(1, size // UNIT)


def gzip_bomb(size: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return _repeat_streams(c.compress(bytes(UNIT)) + c.flush(), size)


def bz2_bomb(size: int) -> bytes:
    return _repeat_streams(bz2.compress(bytes(UNIT), 9), size)


def xz_bomb(size: int) -> bytes:
    return _repeat_streams(lzma.compress(bytes(UNIT)), size)


def lz4_bomb(size: int) -> bytes:
    import lz4.frame  # type: ignore[import-untyped]
    return _repeat_streams(lz4.frame.compress(bytes(UNIT)), size)


def zstd_bomb(size: int) -> bytes:
    import zstandard
    return _repeat_streams(zstandard.ZstdCompressor().compress(bytes(UNIT)), size)


def zlib_bomb(size: int) -> bytes:
    """joblib's zlib: ONE zlib stream (0x78 prefix). Full-flushed deflate blocks reset the
    dictionary, so one block of a MiB of zeros repeats verbatim; the adler32 is the true one."""
    mib = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    c.compress(mib)
    c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    count = max(1, size >> 20)
    adler = 1
    for _ in range(count):
        adler = zlib.adler32(mib, adler)
    # The first block, compressed from the same reset state, is the same bytes as the others.
    return b"\x78\xda" + block * count + b"\x03\x00" + struct.pack(">I", adler)


def deflated_zeros(size: int) -> bytes:
    """Raw deflate (zip method 8) of ``size`` zeros, with a true stream end."""
    return zlib_bomb(size)[2:-4]


def _raw_zip(members: list[tuple[str, bytes]], method: int) -> bytes:
    z = RawZip()
    for name, data in members:
        z.add(name, data, method=method)
    return z.bytes()


def zip_42(levels: int = 5, width: int = 16, leaf: int = 64 << 20) -> bytes:
    """42.zip's shape: ``width`` copies of the level below, ``levels`` deep, over a leaf of
    ``leaf`` zeros (deflated once and stored, so building costs one deflate of the leaf)."""
    inner = _leaf_zip(leaf)
    for level in range(levels - 1):
        inner = _raw_zip([(f"l{level}_{i}.zip", inner) for i in range(width)], 8)
    return inner


def _leaf_zip(leaf: int) -> bytes:
    """A zip whose one member is ``leaf`` zeros, deflated (crc left as 0: it is never reached)."""
    payload = deflated_zeros(leaf)
    name = b"zeros.bin"
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0x21, 0, len(payload),
                        leaf & 0xFFFFFFFF, len(name), 0) + name + payload
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, 0,
                          len(payload), leaf & 0xFFFFFFFF, len(name), 0, 0, 0, 0, 0, 0) + name
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local), 0)
    return local + central + eocd


def zip_chain(depth: int, payload: bytes = b"\x80\x02cposix\nsystem\n.") -> bytes:
    """A zip holding a zip holding ... ``depth`` levels, a pickle at the bottom."""
    data = payload
    for level in range(depth):
        data = _raw_zip([(f"level{level}.zip" if level else "x.pkl", data)], 0)
    return data


def zip_many(count: int) -> bytes:
    """A stored zip of ``count`` empty members, written directly (zipfile takes minutes)."""
    local = bytearray()
    central = bytearray()
    for i in range(count):
        name = b"%x" % i
        offset = len(local)
        local += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0x21, 0, 0, 0,
                             len(name), 0) + name
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, 0,
                               0, 0, len(name), 0, 0, 0, 0, 0, offset) + name
    if count < 0xFFFF:
        eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, len(central),
                           len(local), 0)
        return bytes(local + central + eocd)
    cd_at = len(local)
    z64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count,
                      len(central), cd_at)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, cd_at + len(central), 1)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                       0xFFFFFFFF, 0)
    return bytes(local + central + z64 + locator + eocd)


def nested_lists(depth: int) -> bytes:
    """Protocol-2 opcodes for ``depth`` lists each holding the next: ']' * depth, 'a' * depth
    (no MARK, so only the stack bound applies), with no STOP."""
    return b"]" * depth + b"a" * (depth - 1)


def legacy_torch_nested(depth: int) -> bytes:
    """A legacy torch file whose protocol-version pickle is ``depth`` nested lists (torch
    compares it with 1001; a reader that formats it with repr recurses ``depth`` deep)."""
    magic = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
    return LegacyTorch(magic=magic, protocol=b"\x80\x02" + nested_lists(depth) + b".",
                       sys_info=b"\x80\x02}.", obj=b"\x80\x02}.", keys=b"\x80\x02].",
                       storages=b"").bytes()


def torch_tar_nested(depth: int) -> bytes:
    """A torch tar checkpoint whose 'storages' record key is ``depth`` nested lists."""
    record = (b"\x80\x02(" + nested_lists(depth) + _text("cpu")
              + _global_ref("torch", "FloatStorage") + b"t." + struct.pack("<q", 0))
    return torch_tar(storage_records=[record])


def tar_chained_pax(depth: int) -> bytes:
    """``depth`` pax extended headers in a row before one member: tarfile's _proc_pax
    recurses once per header (RecursionError past ~1000)."""
    block = io.BytesIO()
    with tarfile.open(fileobj=block, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a.pkl")
        data = b"\x80\x02cposix\nsystem\n."
        info.size = len(data)
        info.pax_headers = {"comment": "x"}
        tar.addfile(info, io.BytesIO(data))
    raw = block.getvalue()
    pax = raw[:1024]                    # the 'x' header block and its one data block
    return pax * depth + raw


def dotted_name(parts: int) -> bytes:
    """A GLOBAL whose name has ``parts`` dotted parts (protocol 4 reads dotted names)."""
    name = ".".join(["a"] * parts)
    return b"\x80\x04cos\n" + name.encode() + b"\n."


def lz4_corrupt() -> bytes:
    """An lz4 frame whose block is garbage: python-lz4 raises RuntimeError."""
    import lz4.frame
    good = lz4.frame.compress(b"\x80\x02cposix\nsystem\n." * 100, store_size=False)
    return good[:7] + bytes([0x10, 0, 0, 0]) + b"\xff" * 16 + good[-4:]


if __name__ == "__main__":
    sys.stdout.buffer.write(globals()[sys.argv[1]](*map(int, sys.argv[2:])))
