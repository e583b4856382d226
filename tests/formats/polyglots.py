"""Byte builders for files that two loaders read differently. Everything here writes bytes;
nothing is ever loaded.

* ``tar_with_pickle_header``: a tar whose first header block starts with a pickle (the member
  name holds it), so ``pickle.load`` of the tar runs it while tarfile sees ordinary members;
* ``safetensors_pickle``: a safetensors file whose 8 length bytes start a pickle that swallows
  the JSON header with string opcodes and calls its global from the tensor data;
* ``v7_tar``: a pre-POSIX tar (no 'ustar' magic), which tarfile opens by its header checksum.
"""
from __future__ import annotations

import io
import json
import struct
import tarfile

from .build import evil_global


def tar_bytes(members: list[tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def tar_with_pickle_header(members: list[tuple[str, bytes]],
                           module: str = "posix", name: str = "system") -> bytes:
    """The first member's name is a protocol-0 pickle: GLOBAL, MARK, STRING, TUPLE, REDUCE,
    STOP. pickle.load stops at that STOP, tarfile reads a member with an odd name."""
    payload = f"c{module}\n{name}\n(S'id'\ntR.".encode()
    assert len(payload) < 100, "a ustar name field holds 100 bytes"
    return tar_bytes([(payload.decode(), b"{}\n"), *members])


def v7_tar(members: list[tuple[str, bytes]]) -> bytes:
    """A ustar archive rewritten with V7 headers: magic, version, owner names and prefix
    cleared, checksum recomputed (what `tar --format=v7` writes)."""
    data = bytearray(tar_bytes(members))
    pos = 0
    while pos + 512 <= len(data) and any(data[pos:pos + 512]):
        block = data[pos:pos + 512]
        size = int(block[124:136].split(b"\0")[0] or b"0", 8)
        block[257:512] = bytes(255)                   # magic, version, uname/gname, prefix...
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block)
        data[pos:pos + 512] = block
        pos += 512 + (size + 511) // 512 * 512
    return bytes(data)


def safetensors_pickle(module: str = "posix", name: str = "system") -> bytes:
    """A valid safetensors file that pickle.load executes.

    The length bytes are ``X`` (BINUNICODE) and a 4-byte count that ends the string right
    after the JSON's first string value opens; SHORT_BINSTRING opcodes (``U`` and a printable
    count, valid inside a JSON string) then swallow the rest of the header, and the tensor
    data holds the call."""
    call = evil_global(module, name, protocol=0)
    prefix = '{"__metadata__":{"note":"'
    skip = 8 + len(prefix) - 5                      # BINUNICODE's payload starts at byte 5
    header_len = 0x58 + 256 * skip                  # what those 8 bytes say as a length
    tail = '"},"w":' + json.dumps({"dtype": "U8", "shape": [len(call)],
                                   "data_offsets": [0, len(call)]}) + "}"
    last = 100                                      # the last U swallows filler and the tail
    room = header_len - len(prefix) - (last + 2)    # what the other U chunks must cover
    count = -(-room // 128)                         # chunks of 34..128 bytes (U, n, n bytes)
    sizes = [room // count + (1 if i < room % count else 0) for i in range(count)]
    assert all(34 <= size <= 128 for size in sizes)
    body = "".join("U" + chr(size - 2) + "a" * (size - 2) for size in sizes)
    body += "U" + chr(last) + "a" * (last - len(tail))
    header = (prefix + body + tail).encode()
    assert len(header) == header_len, (len(header), header_len)
    length = struct.pack("<Q", header_len)
    assert length[0] == ord("X") and length[1:5] == struct.pack("<I", skip)
    json.loads(header)                                # the header really is JSON
    return length + header + call


def tar_swallowed_by_binbytes(payload: bytes) -> bytes:
    """A tar whose first header block starts ``B`` and a 4-byte length: BINBYTES swallows the
    rest of the block, so a pickle loader goes on into the member data, ``payload``."""
    data = bytearray(tar_bytes([("Bxxxx", payload)]))
    data[1:5] = struct.pack("<I", 512 - 5)
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    return bytes(data)
