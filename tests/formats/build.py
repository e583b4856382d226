"""Byte builders for the format tests. Everything here writes bytes; nothing is ever loaded.

* pickles: ``evil_global`` (GLOBAL module name), ``evil_stack_global`` (STACK_GLOBAL whose
  strings come from the memo), ``getcwd_pickle`` (pickle.dumps of an object reducing to
  os.getcwd, i.e. ``posix.getcwd``);
* zips: ``rezip`` rebuilds a real archive with zipfile (same names, members replaced, added or
  dropped); ``RawZip`` writes local headers and the central directory by hand so they can
  disagree (hidden entries, name/method/size mismatches, CRC, flags);
* tars: ``torch_tar`` follows torch/serialization.py ``legacy_load``;
* legacy torch: ``LegacyTorch`` splits a real ``_use_new_zipfile_serialization=False`` file
  into its five pickles and the storage bytes, so one part can be replaced.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from picklegate.machine import Collector, PickleMachine

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "real"


def fixture(name: str, folder: Path = FIXTURES) -> bytes:
    return (folder / name).read_bytes()


def manifest(folder: Path = FIXTURES) -> list[dict]:
    return json.loads((folder / "MANIFEST.json").read_text(encoding="utf-8"))["files"]


# ---------------------------------------------------------------------------------------------
# pickles


def evil_global(module: str = "posix", name: str = "system", protocol: int = 2,
                arg: str = "id") -> bytes:
    """``module.name(arg)`` through GLOBAL (protocol 0 text opcodes after the header)."""
    head = bytes([0x80, protocol]) if protocol >= 2 else b""
    return (head + b"c" + module.encode() + b"\n" + name.encode() + b"\n"
            + b"(V" + arg.encode() + b"\ntR.")


def evil_stack_global(module: str = "posix", name: str = "system", arg: str = "id") -> bytes:
    """Protocol 4: both strings memoised, popped, then fetched back for STACK_GLOBAL."""
    def unicode(text: str) -> bytes:
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw

    return (b"\x80\x04" + unicode(module) + b"\x94" + b"0" + unicode(name) + b"\x94" + b"0"
            + b"h\x00h\x01\x93" + unicode(arg) + b"\x85R.")


def evil_ops(module: str = "posix", name: str = "system", arg: str = "id") -> bytes:
    """Opcodes that call module.name(arg) and POP the result: spliced into a real pickle they
    leave its value unchanged."""
    return (b"c" + module.encode() + b"\n" + name.encode() + b"\n" + b"(V" + arg.encode()
            + b"\ntR0")


def plant(pickle_bytes: bytes, module: str = "posix", name: str = "system") -> bytes:
    """A real protocol 2+ pickle with evil_ops() right after its PROTO header (and FRAME, at
    protocol 4+, which is dropped: frames are optional). Memo indices are unchanged."""
    assert pickle_bytes[0] == 0x80, "not a protocol 2+ pickle"
    rest = pickle_bytes[2:]
    if rest[:1] == b"\x95":
        rest = rest[9:]
    return pickle_bytes[:2] + evil_ops(module, name) + rest


class _Getcwd:
    def __reduce__(self):  # noqa: ANN204 - pickled, never unpickled
        return (os.getcwd, ())


def getcwd_pickle(protocol: int = 2) -> bytes:
    """pickle.dumps of an object whose __reduce__ is os.getcwd: imports posix.getcwd."""
    return pickle.dumps(_Getcwd(), protocol=protocol)


def evil_object():
    """An object to hand to joblib.dump / np.save: it pickles as a call of os.getcwd."""
    return _Getcwd()


GETCWD = (os.getcwd.__module__, "getcwd")     # ("posix", "getcwd") on Linux


def pickle_end(data: bytes, start: int = 0) -> int:
    """Where the pickle starting at ``start`` ends (static, via picklegate's machine)."""
    m = PickleMachine(data, start, len(data), Collector())
    after = m.run()
    assert after is not None, "not a complete pickle"
    return after


# ---------------------------------------------------------------------------------------------
# zips


def zip_members(data: bytes) -> list[tuple[str, bytes, int]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i), i.compress_type) for i in z.infolist()]


def make_zip(members: list[tuple[str, bytes]] | list[tuple[str, bytes, int]],
             compression: int = zipfile.ZIP_STORED,
             force_zip64: set[str] | bool = frozenset()) -> bytes:
    """A zip written by zipfile; ``force_zip64``: member names (or True for all) that get
    zip64 local headers."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for item in members:
            name, payload = item[0], item[1]
            method = item[2] if len(item) > 2 else compression
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = method
            with z.open(info, "w", force_zip64=force_zip64 is True or name in force_zip64) as w:
                w.write(payload)
    return out.getvalue()


def rezip(data: bytes, replace: dict[str, bytes] | None = None,
          add: list[tuple[str, bytes]] | None = None, drop: set[str] = frozenset(),
          force_zip64: set[str] | bool = frozenset()) -> bytes:
    """Rebuild a real zip (same names and methods), replacing, adding or dropping members."""
    replace = replace or {}
    members = [(n, replace.get(n, b), m) for n, b, m in zip_members(data) if n not in drop]
    members += [(n, b, zipfile.ZIP_STORED) for n, b in add or []]
    return make_zip(members, force_zip64=force_zip64)


def archive_prefix(data: bytes) -> str:
    """The torch archive folder ('torch_module_sd' for 'torch_module_sd/data.pkl')."""
    return next(n for n, _, _ in zip_members(data) if n.endswith("/data.pkl"))[:-len("/data.pkl")]


@dataclass
class RawEntry:
    name: str
    data: bytes
    method: int = 0                       # 0 stored, 8 deflated
    flags: int = 0
    crc: int | None = None                # None: the right CRC
    local_name: str | None = None         # None: same as name
    listed: bool = True                   # False: local header only (hidden member)
    central_csize: int | None = None      # None: the real compressed size


@dataclass
class RawZip:
    """A zip written by hand: every header field can be made to lie."""

    entries: list[RawEntry] = field(default_factory=list)

    def add(self, name: str, data: bytes, **kw: object) -> RawZip:
        self.entries.append(RawEntry(name, data, **kw))  # type: ignore[arg-type]
        return self

    def bytes(self) -> bytes:
        out = bytearray()
        central = bytearray()
        count = 0
        for e in self.entries:
            payload = e.data
            if e.method == 8:
                c = zlib.compressobj(6, zlib.DEFLATED, -15)
                payload = c.compress(e.data) + c.flush()
            crc = zlib.crc32(e.data) if e.crc is None else e.crc
            lname = (e.local_name if e.local_name is not None else e.name).encode()
            offset = len(out)
            out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, e.flags, e.method, 0, 0x21,
                               crc, len(payload), len(e.data), len(lname), 0)
            out += lname + payload
            if not e.listed:
                continue
            count += 1
            cname = e.name.encode()
            csize = len(payload) if e.central_csize is None else e.central_csize
            central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, e.flags,
                                   e.method, 0, 0x21, crc, csize, len(e.data), len(cname),
                                   0, 0, 0, 0, 0, offset)
            central += cname
        cd_offset = len(out)
        out += central
        out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, len(central),
                           cd_offset, 0)
        return bytes(out)


# ---------------------------------------------------------------------------------------------
# torch tar (torch < 0.4) and legacy stream


def _tar_add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(payload))


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _global_ref(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def tar_storage_record(key: str, raw: bytes, element: str = "FloatStorage",
                       element_size: int = 4) -> bytes:
    """One 'storages' record: pickle (key, location, storage type), int64 count, raw bytes."""
    args = (b"\x80\x02" + b"(" + _text(key) + _text("cpu")
            + _global_ref("torch", element) + b"t.")
    assert len(raw) % element_size == 0
    return args + struct.pack("<q", len(raw) // element_size) + raw


def tar_tensor_record(key: str, storage_key: str, shape: tuple[int, ...]) -> bytes:
    """One 'tensors' record: pickle (key, storage id, tensor type), ndim, pad, sizes, strides,
    storage offset."""
    args = (b"\x80\x02(" + _text(key) + _text(storage_key)
            + _global_ref("torch", "FloatTensor") + b"t.")
    strides = []
    step = 1
    for dim in reversed(shape):
        strides.insert(0, step)
        step *= dim
    return (args + struct.pack("<i", len(shape)) + b"\x00" * 4
            + struct.pack(f"<{len(shape)}q", *shape) + struct.pack(f"<{len(shape)}q", *strides)
            + struct.pack("<q", 0))


def torch_tar(pickle_member: bytes | None = None, storage_records: list[bytes] | None = None,
              storage_views: bytes | None = None, tensor_records: list[bytes] | None = None,
              sys_info: bytes | None = None) -> bytes:
    """A tar checkpoint laid out as torch's legacy_load reads it. Defaults: one float storage
    '1' of 3 elements, one tensor '2' over it, and an object pickle naming tensor '2' through
    a persistent id."""
    if storage_records is None:
        storage_records = [tar_storage_record("1", struct.pack("<3f", 1.0, 2.0, 3.0))]
    if tensor_records is None:
        tensor_records = [tar_tensor_record("2", "1", (3,))]
    if storage_views is None:
        storage_views = pickle.dumps([], 2)
    if sys_info is None:
        sys_info = pickle.dumps({"protocol_version": 1001, "little_endian": True,
                                 "type_sizes": {"short": 2, "int": 4, "long": 8}}, 2)
    if pickle_member is None:
        # {'weight': <persistent id '2'>}
        pickle_member = b"\x80\x02}X\x06\x00\x00\x00weightX\x01\x00\x00\x002Qs."
    storages = pickle.dumps(len(storage_records), 2) + b"".join(storage_records) + storage_views
    tensors = pickle.dumps(len(tensor_records), 2) + b"".join(tensor_records)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _tar_add(tar, "sys_info", sys_info)
        _tar_add(tar, "pickle", pickle_member)
        _tar_add(tar, "tensors", tensors)
        _tar_add(tar, "storages", storages)
    return out.getvalue()


@dataclass
class LegacyTorch:
    """A legacy (non-zip) torch file: five pickles, then the storage bytes."""

    magic: bytes
    protocol: bytes
    sys_info: bytes
    obj: bytes
    keys: bytes
    storages: bytes

    @classmethod
    def parse(cls, data: bytes) -> LegacyTorch:
        parts = []
        pos = 0
        for _ in range(5):
            end = pickle_end(data, pos)
            parts.append(data[pos:end])
            pos = end
        return cls(*parts, storages=data[pos:])

    def bytes(self) -> bytes:
        return self.magic + self.protocol + self.sys_info + self.obj + self.keys + self.storages


# ---------------------------------------------------------------------------------------------
# joblib


def drop_first_frame(data: bytes) -> bytes:
    """A protocol 4+ pickle without its first FRAME header (frames are optional), so bytes
    inside it can be edited freely."""
    assert data[2:3] == b"\x95", "no frame after PROTO"
    return data[:2] + data[11:]


def joblib_padding_exploit(data: bytes, raw: bytes, module: str = "posix",
                           name: str = "system") -> bytes:
    """Rewrite the padding before the array whose bytes are ``raw``: its length byte becomes
    'N' (NONE, 78 bytes of padding) and the padding holds POP, a call of module.name and STOP.
    joblib.load skips all of it; plain pickle.load runs it."""
    at = data.find(raw)
    assert at > 0 and data.find(raw, at + 1) < 0, "array bytes not found exactly once"
    pad = 0
    while data[at - pad - 1] == 0xFF:
        pad += 1
    assert data[at - pad - 1] == pad, "no padding-length byte before the array"
    body = b"0" + evil_ops(module, name) + b"."
    padding = body + b"\xff" * (ord("N") - len(body))
    return data[:at - pad - 1] + b"N" + padding + data[at:]


# ---------------------------------------------------------------------------------------------
# other formats


def npy(header: str, payload: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy file with the header text as given (padded like numpy, newline-terminated)."""
    text = header.encode("latin-1")
    fixed = 10 if version[0] == 1 else 12
    pad = (-(fixed + len(text) + 1)) % 64
    text = text + b" " * pad + b"\n"
    size = struct.pack("<H", len(text)) if version[0] == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes(version) + size + text + payload


def safetensors(tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    header: dict[str, object] = {}
    blob = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + blob


# ---------------------------------------------------------------------------------------------
# zip structure mutations (end records, directories, zip64) for the differential tests

EOCD_FMT = "<4sHHHHIIH"
ZIP64_EOCD_FMT = "<4sQHHIIQQQQ"
ZIP64_LOCATOR_FMT = "<4sIQI"


def local_entry(name: str, payload: bytes) -> bytes:
    """A stored local header and its data, listed in no directory."""
    raw = name.encode()
    return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0x21, zlib.crc32(payload),
                       len(payload), len(payload), len(raw), 0) + raw + payload


@dataclass
class ZipParts:
    """A (non-zip64, comment-less) zip split into the bytes before its directory and its raw
    central entries, to be written back with end records that say what a test wants."""

    body: bytes
    entries: list[bytes]

    @classmethod
    def parse(cls, data: bytes) -> ZipParts:
        sig, _, _, count, _, size, offset, comment = struct.unpack(EOCD_FMT, data[-22:])
        assert sig == b"PK\x05\x06" and comment == 0 and b"PK\x06\x07" not in data[-42:-22]
        entries, pos = [], offset
        for _ in range(count):
            name_len, extra_len, comment_len = struct.unpack("<HHH", data[pos + 28:pos + 34])
            end = pos + 46 + name_len + extra_len + comment_len
            entries.append(data[pos:end])
            pos = end
        assert pos == offset + size
        return cls(data[:offset], entries)

    def entry_name(self, index: int) -> str:
        e = self.entries[index]
        return e[46:46 + struct.unpack("<H", e[28:30])[0]].decode()

    def bytes(self, entries: list[bytes] | None = None, count: int | None = None,
              size: int | None = None, offset: int | None = None, comment: bytes = b"",
              prefix: bytes = b"", suffix: bytes = b"") -> bytes:
        """body + directory + end record; ``count``/``size``/``offset`` override its fields."""
        entries = self.entries if entries is None else entries
        directory = b"".join(entries)
        n = len(entries) if count is None else count
        eocd = struct.pack(EOCD_FMT, b"PK\x05\x06", 0, 0, n, n,
                           len(directory) if size is None else size,
                           len(self.body) if offset is None else offset, len(comment))
        return prefix + self.body + directory + eocd + comment + suffix

    def zip64(self, directories: list[list[bytes]] | None = None,
              locator_names: int = -1) -> bytes:
        """body, then per directory its entries and a zip64 end record, then a locator and an
        end record. zipfile reads the LAST zip64 record (right before the locator); the
        locator names record ``locator_names`` (index into ``directories``), which is what
        miniz reads."""
        directories = [self.entries] if directories is None else directories
        out = bytearray(self.body)
        records = []
        for entries in directories:
            offset = len(out)
            out += b"".join(entries)
            records.append(len(out))
            out += struct.pack(ZIP64_EOCD_FMT, b"PK\x06\x06", 44, 45, 45, 0, 0, len(entries),
                               len(entries), len(out) - offset, offset)
        out += struct.pack(ZIP64_LOCATOR_FMT, b"PK\x06\x07", 0, records[locator_names], 1)
        out += struct.pack(EOCD_FMT, b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                           0xFFFFFFFF, 0)
        return bytes(out)


def torch_like_zip(tensors: int, size: int, folder: str = "archive") -> bytes:
    """A stored zip laid out as torch.save writes it: ``<folder>/data.pkl`` (a protocol 2
    pickle of a dict whose values are persistent ids ('storage', torch.FloatStorage, key,
    'cpu', numel)), then one ``<folder>/data/<key>`` record of ``size`` bytes per key, then
    version and byteorder. Built by hand so 20k members take milliseconds."""
    def text(value: str) -> bytes:
        raw = value.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw

    items = b"".join(text(f"w{i}") + b"(" + text("storage") + b"ctorch\nFloatStorage\n"
                     + text(str(i)) + text("cpu") + b"J" + struct.pack("<i", size // 4)
                     + b"tQ" for i in range(tensors))
    data_pkl = b"\x80\x02}(" + items + b"u."
    z = RawZip().add(f"{folder}/data.pkl", data_pkl)
    block = bytes(range(256)) * (size // 256 + 1)
    for i in range(tensors):
        z.add(f"{folder}/data/{i}", block[:size])
    z.add(f"{folder}/version", b"3\n").add(f"{folder}/byteorder", b"little")
    return z.bytes()


class CountingBuffer:
    """A Buffer (bytes-like: len, indexing, slicing, find) that counts the bytes it hands out
    or searches, so tests can bound the work of a reader without timing it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.examined = 0
        self.finds = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):  # int or slice, like bytes
        value = self.data[index]
        self.examined += len(value) if isinstance(index, slice) else 1
        return value

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        end = len(self.data) if end is None else min(end, len(self.data))
        pos = self.data.find(sub, start, end)
        self.finds += 1
        self.examined += max(0, (end if pos < 0 else pos + len(sub)) - start)
        return pos

    def rfind(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        end = len(self.data) if end is None else min(end, len(self.data))
        pos = self.data.rfind(sub, start, end)
        self.finds += 1
        self.examined += max(0, end - (start if pos < 0 else pos))
        return pos


# joblib array layouts (test_joblib_layout.py): hand-made wrappers, protocol 2 text opcodes


WRAPPER_GLOBAL = _global_ref("joblib.numpy_pickle", "NumpyArrayWrapper")
# Ways to put a NumpyArrayWrapper on the stack. Those in JL_INIT run __init__ (with four Nones:
# the BUILD state then sets the real attributes, but allow_mmap/alignment keep their defaults).
JL_CONSTRUCT = {
    "NEWOBJ": WRAPPER_GLOBAL + b")\x81",
    "NEWOBJ_EX": b"\x80\x04" + WRAPPER_GLOBAL + b")}\x92",     # PROTO 4 mid-stream is allowed
    "REDUCE": WRAPPER_GLOBAL + b"(NNNNtR",
    "OBJ": b"(" + WRAPPER_GLOBAL + b"NNNNo",
    "INST": b"(NNNNijoblib.numpy_pickle\nNumpyArrayWrapper\n",
    "OBJ-no-args": b"(" + WRAPPER_GLOBAL + b"o",
    "copyreg.__newobj__": _global_ref("copyreg", "__newobj__") + b"(" + WRAPPER_GLOBAL + b"tR",
    "copyreg.__newobj_ex__": (_global_ref("copyreg", "__newobj_ex__") + b"(" + WRAPPER_GLOBAL
                              + b")}tR"),
    "copyreg._reconstructor": (_global_ref("copyreg", "_reconstructor") + b"(" + WRAPPER_GLOBAL
                               + _global_ref("builtins", "object") + b"NtR"),
    "dotted": b"\x80\x04\x8c\x06joblib\x8c\x1enumpy_pickle.NumpyArrayWrapper\x93)\x81",
}
JL_INIT = frozenset({"REDUCE", "OBJ", "INST"})


def jl_int(n: int) -> bytes:
    return b"I%d\n" % n


def jl_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def jl_dtype_state(elsize: int = -1, flags: int = 0, *, version: int = 3, subarray: bytes = b"N",
                   names: bytes = b"N", fields: bytes = b"N", alignment: int = -1,
                   metadata: bytes | None = None) -> bytes:
    """numpy's dtype state tuple (version, endian, subarray, names, fields, elsize, alignment,
    flags[, metadata]) as arraydescr_reduce writes it."""
    items = [jl_int(version), _text("|"), subarray, names, fields, jl_int(elsize),
             jl_int(alignment), jl_int(flags)]
    return jl_tuple(*items, *([metadata] if metadata is not None else []))


def jl_dtype(descr: str, state: bytes | None = None, copy: bool = True) -> bytes:
    """numpy.dtype(descr, False, copy), then BUILD with ``state`` (opcodes) if given."""
    built = (_global_ref("numpy", "dtype") + b"(" + _text(descr) + b"\x89"
             + (b"\x88" if copy else b"\x89") + b"tR")
    return built + (state + b"b" if state is not None else b"")


def jl_fields(*fields: tuple[str, bytes, int]) -> tuple[bytes, bytes]:
    """(names tuple, fields dict) opcodes for a structured dtype state: (name, dtype, offset)."""
    names = jl_tuple(*(_text(name) for name, _, _ in fields))
    items = b"".join(_text(name) + jl_tuple(dtype, jl_int(offset))
                     for name, dtype, offset in fields)
    return names, b"}(" + items + b"u"


def jl_wrapper(dtype: bytes, shape: tuple[int, ...], construct: str = "NEWOBJ",
               alignment: int | None | str = 16, extra_state: bytes = b"") -> bytes:
    """A NumpyArrayWrapper built by ``construct`` and BUILT with a joblib-like state dict;
    ``alignment="absent"`` leaves numpy_array_alignment_bytes out of the state."""
    items = (_text("subclass") + _global_ref("numpy", "ndarray")
             + _text("shape") + jl_tuple(*(jl_int(d) for d in shape))
             + _text("order") + _text("C") + _text("dtype") + dtype
             + _text("allow_mmap") + b"\x89")
    if alignment != "absent":
        items += _text("numpy_array_alignment_bytes") + (
            b"N" if alignment is None else jl_int(int(alignment)))
    return JL_CONSTRUCT[construct] + b"}(" + items + extra_state + b"ub"


def jl_raw(data: bytes, padded: bool, pad: int = 3) -> bytes:
    """What joblib reads after the BUILD: [padding-length byte, padding,] data."""
    return (bytes([pad]) + b"\xff" * pad if padded else b"") + data


JL_TWIN_TAIL = _global_ref("numpy", "dtype") + b"(" + _text("i2") + b"tR"


def jl_file(wrapper: bytes, raw: bytes, tail: bytes = JL_TWIN_TAIL) -> bytes:
    """PROTO 2, the wrapper, joblib's raw bytes, then POP the array and return ``tail``'s
    value. With the default tail (numpy.dtype('i2')) the file only names joblib and numpy
    globals, so real joblib.load may check it: it returns dtype('int16') only if it read
    exactly ``raw`` after the BUILD. Pass ``evil_ops() + b"N"`` to plant a call instead."""
    return b"\x80\x02" + wrapper + raw + b"0" + tail + b"."
