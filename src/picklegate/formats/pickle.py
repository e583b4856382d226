"""Bare pickle streams (one or several concatenated)."""
from __future__ import annotations

from picklegate.formats.base import Analysis, Context
from picklegate.machine import Buffer, analyse_pickles


def read_pickle(buf: Buffer, ctx: Context, analysis: Analysis) -> str:
    analysis.merge(analyse_pickles(buf, member=ctx.member, limits=ctx.limits))
    return "pickle"
