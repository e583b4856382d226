"""Detection by content, never by extension."""
from __future__ import annotations

from picklegate.formats.base import Reader
from picklegate.formats.pickle import read_pickle
from picklegate.machine import Buffer


def reader_for(buf: Buffer) -> Reader:
    return read_pickle
