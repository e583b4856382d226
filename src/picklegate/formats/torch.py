"""PyTorch layouts: the zip checkpoint (and TorchScript), the legacy stream and the tar format.

* zip (torch.save since 1.6): ``<archive>/data.pkl`` names tensor storages through persistent
  ids ``('storage', storage_type, key, location, numel)``; their bytes live in
  ``<archive>/data/<key>`` and are never unpickled, so only those records are exempt from
  analysis. TorchScript adds ``constants.pkl`` (storages in ``constants/<key>``) and ``code/``.
* legacy (``_use_new_zipfile_serialization=False``): five pickles (magic number, protocol
  version, sys info, the object, the storage keys), then per key an int64 element count and
  count * element size raw bytes (torch/serialization.py ``_legacy_load``).
* tar (torch < 0.4): members ``sys_info``, ``pickle``, ``storages``, ``tensors``
  (torch/serialization.py ``legacy_load``).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from picklegate.findings import FindingKind
from picklegate.formats.base import Analysis, Context
from picklegate.formats.detect import PICKLE_NAMES
from picklegate.machine import (
    Buffer,
    Collector,
    Fatal,
    PickleMachine,
    Ref,
    Seq,
    Value,
    analyse_pickles,
    describe,
)

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# torch/_utils.py _element_size, by the storage class names persistent ids carry.
ELEMENT_SIZES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "ComplexDoubleStorage": 16, "ComplexFloatStorage": 8,
    "QInt8Storage": 1, "QUInt8Storage": 1, "QInt32Storage": 4, "QUInt4x2Storage": 1,
    "QUInt2x4Storage": 1, "UntypedStorage": 1,
}


def storage_key(pid: Value) -> tuple[str, Value] | None:
    """(key, storage type) of a torch storage persistent id, else None."""
    if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" \
            and isinstance(pid[2], str):
        return pid[2], pid[1]
    return None


def element_size(storage_type: Value) -> int | None:
    if isinstance(storage_type, Ref) and storage_type.ref.module in ("torch", "torch.storage"):
        return ELEMENT_SIZES.get(storage_type.ref.name)
    return None


# ---------------------------------------------------------------------------------------------
# zip layout


@dataclass
class TorchLayout:
    """Which members of a zip are torch pickles and which are their raw storage records.

    torch's reader takes the folder of the first member as the archive name and refuses
    archives with a member outside it (caffe2/serialize/inline_container.cc getAllRecords);
    torch.load then reads ``<archive>/data.pkl`` and, for each persistent id
    ``('storage', type, key, ...)`` it holds, the raw bytes of ``<archive>/data/<key>``
    (torch/serialization.py ``_load``). Only those records are exempt, and only in that
    layout. TorchScript keeps its constants' tensors in ``<archive>/constants/<key>``: they are
    analysed like any member (raw bytes nothing recognises are data)."""

    names: list[str]
    storages: set[str] = field(default_factory=set)
    skipped: int = 0

    @property
    def format(self) -> str:
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in self.names):
            if any(n.endswith("/constants.pkl") or "/code/" in n or n.startswith("code/")
                   for n in self.names):
                return "torchscript"
            return "torch-zip"
        if self.names and all(n.endswith(".npy") for n in self.names):
            return "npz"
        return "zip"

    archive: str | None = field(init=False)

    def __post_init__(self) -> None:
        # The one top-level folder every member is in, when it holds data.pkl.
        folders = {n.split("/", 1)[0] if "/" in n else None for n in self.names}
        folder = folders.pop() if len(folders) == 1 else None
        self.archive = folder if folder and f"{folder}/data.pkl" in self.names else None

    def is_pickle_member(self, name: str) -> bool:
        return name.endswith(".pkl")

    def record_storages(self, name: str, pids: list[tuple[int, Value]]) -> None:
        if self.archive is None or name != f"{self.archive}/data.pkl":
            return
        for _, pid in pids:
            found = storage_key(pid)
            if found is not None:
                self.storages.add(f"{self.archive}/data/{found[0]}")

    def is_storage(self, name: str) -> bool:
        # torch's storage keys are numbers; a key naming a pickle ('data/a.pkl') would exempt
        # a member that some loader does unpickle, so such members are analysed.
        return name in self.storages and not name.lower().endswith(PICKLE_NAMES)

    def notes(self, member: str | None) -> list[str]:
        where = f"{member}: " if member else ""
        notes = []
        if self.skipped:
            notes.append(f"{where}{self.skipped} tensor storage record(s) named by persistent "
                         "ids were not parsed (raw bytes torch never unpickles)")
        code = sorted(n for n in self.names if "/code/" in n or n.startswith("code/"))
        if code:
            notes.append(f"{where}TorchScript code members (compiled by torch.jit.load, not "
                         f"unpickled): {', '.join(code)}")
        return notes


# ---------------------------------------------------------------------------------------------
# legacy stream


def first_value_is_magic(buf: Buffer, start: int, end: int) -> bool:
    """Does the first pickle in ``buf`` evaluate to torch's legacy magic number?"""
    # The magic-number pickle is ~20 bytes; never run a whole large stream just to ask.
    m = PickleMachine(buf, start, min(end, start + 64), Collector())
    return m.run() is not None and m.result == MAGIC_NUMBER


def read_legacy(buf: Buffer, start: int, end: int, ctx: Context, analysis: Analysis) -> str:
    out = ctx.collector()
    try:
        _legacy(buf, start, end, ctx, out)
    except Fatal as fatal:
        out.finding(fatal.kind, fatal.offset, fatal.message)
    analysis.merge(out)
    return "torch-legacy"


def _legacy(buf: Buffer, start: int, end: int, ctx: Context, out: Collector) -> None:
    pos = start
    results: list[Value] = []
    for _ in range(5):
        machine = PickleMachine(buf, pos, end, out, ctx.limits)
        after = machine.run()
        if after is None:
            return                       # the machine already reported why
        results.append(machine.result)
        pos = after
    if results[1] != PROTOCOL_VERSION:
        out.finding(FindingKind.MALFORMED, start,
                    f"legacy torch file with protocol version {_shown(results[1])}; torch "
                    "refuses it")
    pos = _skip_storages(buf, pos, end, results[4], out)
    if pos < end:
        # torch reads nothing after the storages; any further bytes are analysed, so nothing
        # can hide there for another loader.
        out.finding(FindingKind.MALFORMED, pos,
                    f"{end - pos} bytes after the last tensor storage of a legacy torch file")
        analyse_pickles(buf, pos, end, limits=ctx.limits, collector=out)


def _skip_storages(buf: Buffer, pos: int, end: int, keys: Value, out: Collector) -> int:
    sizes: dict[str, int | None] = {}
    for _, pid in out.persistent_ids:
        found = storage_key(pid)
        if found is not None:
            sizes[found[0]] = element_size(found[1])
    if not isinstance(keys, Seq) or keys.dropped or not all(isinstance(k, str) for k in keys.items):
        raise Fatal(FindingKind.UNRESOLVED, pos, "legacy torch file: the storage key list cannot "
                                                 "be read, so the storage bytes cannot be skipped")
    for key in keys.items:
        assert isinstance(key, str)
        size = sizes.get(key)
        if size is None:
            raise Fatal(FindingKind.UNRESOLVED, pos,
                        f"legacy torch file: storage {_shown(key)} has no known element size")
        pos = _skip_raw_storage(buf, pos, end, size, key)
    return pos


def _shown(value: Value) -> str:
    """A value in a message, in bounded time and length: repr/str of a symbolic value recurses
    through every level of nesting (1000 nested lists raise RecursionError) and prints it all."""
    if type(value) is int:
        return str(value) if -10**18 < value < 10**18 else "a huge number"
    return describe(value)


def _skip_raw_storage(buf: Buffer, pos: int, end: int, size: int, key: Value) -> int:
    if pos + 8 > end:
        raise Fatal(FindingKind.MALFORMED, pos, f"truncated: storage {_shown(key)} has no size")
    count: int = struct.unpack("<q", bytes(buf[pos:pos + 8]))[0]
    stop = pos + 8 + count * size
    if count < 0 or stop > end:
        raise Fatal(FindingKind.MALFORMED, pos,
                    f"truncated: storage {_shown(key)} needs {count * size} bytes")
    return stop


# ---------------------------------------------------------------------------------------------
# tar members


def read_tar_storages(buf: Buffer, start: int, end: int, ctx: Context, out: Collector) -> None:
    """``storages``: a count, then per storage a pickle (key, location, type) and raw data,
    then a pickle of the storage views."""
    count, pos = _count(buf, start, end, ctx, out)
    for _ in range(count):
        machine = PickleMachine(buf, pos, end, out, ctx.limits)
        after = machine.run()
        if after is None:
            return
        args = machine.result
        if not (isinstance(args, tuple) and len(args) == 3):
            args = (None, None, None)
        size = element_size(args[2])
        if size is None:
            raise Fatal(FindingKind.UNRESOLVED, pos, "tar torch file: a storage's type cannot "
                                                     "be read, so its bytes cannot be skipped")
        pos = _skip_raw_storage(buf, after, end, size, args[0])
    if pos < end:
        # legacy_load then reads one more pickle: the list of storage views.
        after = PickleMachine(buf, pos, end, out, ctx.limits).run()
        if after is None:
            return
        pos = after
    _trailing(buf, pos, end, ctx, out)


def read_tar_tensors(buf: Buffer, start: int, end: int, ctx: Context, out: Collector) -> None:
    """``tensors``: a count, then per tensor a pickle and int32 ndim, 4 bytes, sizes, strides,
    offset (int64s)."""
    count, pos = _count(buf, start, end, ctx, out)
    for _ in range(count):
        after = PickleMachine(buf, pos, end, out, ctx.limits).run()
        if after is None:
            return
        if after + 8 > end:
            raise Fatal(FindingKind.MALFORMED, after, "truncated tensor record")
        ndim = struct.unpack("<i", bytes(buf[after:after + 4]))[0]
        pos = after + 8 + 16 * ndim + 8
        if ndim < 0 or pos > end:
            raise Fatal(FindingKind.MALFORMED, after, "truncated tensor record")
    _trailing(buf, pos, end, ctx, out)


def _count(buf: Buffer, start: int, end: int, ctx: Context, out: Collector) -> tuple[int, int]:
    machine = PickleMachine(buf, start, end, out, ctx.limits)
    after = machine.run()
    if after is None or type(machine.result) is not int or machine.result < 0:
        raise Fatal(FindingKind.UNRESOLVED, start, "tar torch file: the record count cannot be "
                                                   "read, so the records cannot be followed")
    return machine.result, after


def _trailing(buf: Buffer, pos: int, end: int, ctx: Context, out: Collector) -> None:
    if pos < end:
        out.finding(FindingKind.MALFORMED, pos, f"{end - pos} unexpected bytes after the records")
        analyse_pickles(buf, pos, end, limits=ctx.limits, collector=out)
