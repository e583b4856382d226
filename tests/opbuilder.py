"""A tiny assembler for hand-written pickle opcode streams (tests only; nothing is ever loaded).

    P().proto(4).short_binunicode("os").memoize().short_binunicode("system").stack_global()
       .empty_tuple().reduce().stop().bytes()

Every opcode in ``pickletools.opcodes`` is a method named after it in lower case (``global_`` for
GLOBAL, a Python keyword). Arguments are encoded by the opcode's ArgumentDescriptor name, so the
table below is the whole encoder. ``raw(b"...")`` appends bytes verbatim and ``label(name)``
remembers the current offset in ``labels`` (for expected opcode offsets).
"""
from __future__ import annotations

import pickle
import pickletools
import struct
from typing import Any, Callable


def _text(value: str | bytes, encoding: str = "utf-8", errors: str = "surrogatepass") -> bytes:
    return value if isinstance(value, bytes) else value.encode(encoding, errors)


def _latin1(value: str | bytes) -> bytes:
    return _text(value, "latin-1", "strict")


def _counted(fmt: str, encode: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    def enc(value: Any) -> bytes:
        data = encode(value)
        return struct.pack(fmt, len(data)) + data
    return enc


def _line(value: Any) -> bytes:
    """A newline-terminated argument: bytes verbatim, anything else via str()."""
    return (value if isinstance(value, bytes) else str(value).encode("ascii")) + b"\n"


def _stringnl(value: str | bytes) -> bytes:
    # STRING: a quoted, escaped Python-2 str literal, exactly as protocol 0 writes it.
    return repr(_latin1(value))[1:].encode("ascii") + b"\n"


def _pair(module: str | bytes, name: str | bytes) -> bytes:
    return _text(module) + b"\n" + _text(name) + b"\n"


def _long1(value: int) -> bytes:
    data = pickle.encode_long(value)
    return bytes([len(data)]) + data


def _long4(value: int) -> bytes:
    data = pickle.encode_long(value)
    return struct.pack("<i", len(data)) + data


ENCODERS: dict[str, Callable[..., bytes]] = {
    "uint1": lambda v: struct.pack("<B", v),
    "uint2": lambda v: struct.pack("<H", v),
    "int4": lambda v: struct.pack("<i", v),
    "uint4": lambda v: struct.pack("<I", v),
    "uint8": lambda v: struct.pack("<Q", v),
    "decimalnl_short": _line,
    "decimalnl_long": lambda v: _line(v if isinstance(v, bytes) else f"{v}L"),
    "floatnl": lambda v: _line(v if isinstance(v, bytes) else repr(float(v))),
    "float8": lambda v: struct.pack(">d", v),
    "long1": _long1,
    "long4": _long4,
    "stringnl": _stringnl,
    "stringnl_noescape": lambda v: _text(v) + b"\n",
    "stringnl_noescape_pair": _pair,
    "string1": _counted("<B", _latin1),
    "string4": _counted("<i", _latin1),
    "bytes1": _counted("<B", bytes),
    "bytes4": _counted("<I", bytes),
    "bytes8": _counted("<Q", bytes),
    "bytearray8": _counted("<Q", bytes),
    "unicodestringnl": lambda v: _text(v, "raw-unicode-escape", "strict") + b"\n",
    "unicodestring1": _counted("<B", _text),
    "unicodestring4": _counted("<I", _text),
    "unicodestring8": _counted("<Q", _text),
}

CODES: dict[str, int] = {op.name: op.code.encode("latin-1")[0] for op in pickletools.opcodes}


class P:
    """An opcode stream under construction; every method returns ``self``."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.labels: dict[str, int] = {}

    def raw(self, data: bytes) -> P:
        self.data += data
        return self

    def label(self, name: str) -> P:
        self.labels[name] = len(self.data)
        return self

    def bytes(self) -> bytes:
        return bytes(self.data)

    def __len__(self) -> int:
        return len(self.data)


def _method(op: pickletools.OpcodeInfo) -> Callable[..., P]:
    code = bytes([CODES[op.name]])
    encode = ENCODERS[op.arg.name] if op.arg is not None else None

    def emit(self: P, *args: Any) -> P:
        if encode is None:
            if args:
                raise TypeError(f"{op.name} takes no argument")
            return self.raw(code)
        return self.raw(code + encode(*args))
    emit.__name__ = op.name.lower()
    emit.__doc__ = f"{op.name} ({op.arg.name if op.arg else 'no argument'})"
    return emit


for _op in pickletools.opcodes:
    _name = _op.name.lower()
    setattr(P, _name + "_" if _name == "global" else _name, _method(_op))
