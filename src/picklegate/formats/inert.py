"""Content that carries no pickle: safetensors, Git LFS pointers, and what nothing recognises."""
from __future__ import annotations

from picklegate.findings import FindingKind
from picklegate.formats.base import Analysis, Context
from picklegate.machine import Buffer


def read_safetensors(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    # A JSON header and raw tensor bytes: nothing in it is ever unpickled.
    return "safetensors"


def read_lfs_pointer(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    text = bytes(buf[start:min(end, start + 1024)]).decode("utf-8", "replace")
    oid = next((line.split(":", 1)[1] for line in text.splitlines()
                if line.startswith("oid sha256:")), "unknown")
    analysis.finding(ctx, FindingKind.LFS_POINTER, start,
                     f"Git LFS pointer (oid sha256:{oid}): the model's content is not here, so "
                     "it was not scanned; fetch LFS objects (actions/checkout with lfs: true, or "
                     "git lfs pull) and scan again")
    return "lfs-pointer"


def read_unknown(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    first = bytes(buf[start:min(end, start + 8)]).hex(" ")
    if ctx.top_level:
        analysis.finding(ctx, FindingKind.UNKNOWN_FORMAT, start,
                         f"content matches no format picklegate knows (first bytes: {first}); "
                         "it was not scanned (set 'unknown_formats: allow' in the policy to "
                         "accept such files)")
    return "unknown"
