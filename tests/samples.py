"""Sample pickles built as bytes. Tests never load them."""
from __future__ import annotations

import pickle


def global_call(module: str, name: str, protocol: int = 2) -> bytes:
    """A pickle that imports module.name and calls it with no arguments (never loaded)."""
    head = bytes([0x80, protocol]) if protocol >= 2 else b""
    return head + b"c" + module.encode() + b"\n" + name.encode() + b"\n)R."


def clean(protocol: int = 2) -> bytes:
    return pickle.dumps({"weights": [1.0, 2.0], "name": "ok"}, protocol=protocol)


LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
               b"size 12345\n")
