"""NumPy ``.npy``: the header is parsed as a literal (never evaluated); object arrays carry a
pickle after it, numeric arrays carry raw data that is never read.

numpy/lib/format.py: magic ``\\x93NUMPY``, major, minor, header length (uint16 for 1.0,
uint32 for 2.0/3.0), then a dict literal with exactly 'descr', 'fortran_order' and 'shape'.
"""
from __future__ import annotations

import re
import struct
from typing import Any

from picklegate.findings import FindingKind
from picklegate.formats.base import Analysis, Context
from picklegate.formats.pickle import read_pickle
from picklegate.machine import Buffer

MAX_HEADER = 1 << 20
# dtype strings numpy accepts that are provably not object dtypes. Anything else is treated as
# possibly-object and its payload analysed as a pickle (fail closed).
_NUMERIC = re.compile(
    r"^[<>|=]?(\?|b1|[biuf]\d{0,2}|c\d{0,2}|[SaUV]\d*|[mM]8(\[\d*\w+\])?)$")
_NUMERIC_NAMES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128", "float", "int", "complex",
    "bytes", "str"}


def read_npy(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    header = _header(buf, start, end, ctx, analysis)
    if header is None:
        return "numpy-npy"
    descr, data_start = header
    if _provably_numeric(descr):
        return "numpy-npy"
    analysis.notes.append(f"{ctx.member or 'file'}: object array; its pickle payload was analysed")
    read_pickle(buf, data_start, end, ctx, analysis)
    return "numpy-npy"


def _header(buf: Buffer, start: int, end: int, ctx: Context,
            analysis: Analysis) -> tuple[Any, int] | None:
    fixed = bytes(buf[start:min(end, start + 12)])
    if len(fixed) < 10:
        analysis.finding(ctx, FindingKind.MALFORMED, start, "truncated .npy header")
        return None
    major = fixed[6]
    if major == 1:
        size, at = struct.unpack("<H", fixed[8:10])[0], start + 10
    elif major in (2, 3) and len(fixed) >= 12:
        size, at = struct.unpack("<I", fixed[8:12])[0], start + 12
    else:
        analysis.finding(ctx, FindingKind.MALFORMED, start,
                         f"unsupported .npy format version {major}.{fixed[7]}")
        return None
    if size > MAX_HEADER or at + size > end:
        analysis.finding(ctx, FindingKind.MALFORMED, start,
                         f".npy header length {size} does not fit the file")
        return None
    text = bytes(buf[at:at + size]).decode("utf-8" if major == 3 else "latin-1", "replace")
    parsed = _literal(text, major)
    if parsed is None:
        analysis.finding(ctx, FindingKind.MALFORMED, at,
                         ".npy header is not a Python literal dictionary")
        return None
    if not isinstance(parsed, dict) or set(parsed) != {"descr", "fortran_order", "shape"}:
        analysis.finding(ctx, FindingKind.MALFORMED, at,
                         ".npy header must have exactly the keys descr, fortran_order, shape")
        return None
    return parsed["descr"], at + size


def _literal(text: str, major: int) -> Any:
    """The header as numpy's _read_array_header parses it, or None where numpy fails.

    numpy tries ast.literal_eval; on a SyntaxError in a version 1.0 or 2.0 file it drops the
    'L' after every number (Python 2 longs, as in ``(2L,)``) with tokenize and tries again."""
    import ast                          # (start-up: only when an .npy header is read)
    import tokenize

    try:
        return ast.literal_eval(text)
    except SyntaxError:
        if major > 2:
            return None
    except (ValueError, TypeError, MemoryError, RecursionError):   # TypeError: {[1]: 2}
        return None
    try:
        return ast.literal_eval(_without_long_suffix(text))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError,
            tokenize.TokenError, IndentationError):
        return None


def _without_long_suffix(text: str) -> str:
    """numpy/lib/format.py _filter_header: a NAME token 'L' right after a NUMBER is dropped."""
    import io
    import tokenize

    tokens = []
    after_number = False
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if not (after_number and token.type == tokenize.NAME and token.string == "L"):
            tokens.append(token)
        after_number = token.type == tokenize.NUMBER
    return str(tokenize.untokenize(tokens))


def _provably_numeric(descr: Any) -> bool:
    if isinstance(descr, str):
        return descr in _NUMERIC_NAMES or _NUMERIC.match(descr) is not None
    if isinstance(descr, list) and descr:
        return all(isinstance(field, tuple) and 2 <= len(field) <= 3
                   and isinstance(field[0], (str, tuple)) and _provably_numeric(field[1])
                   for field in descr)
    return False
