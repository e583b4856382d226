"""The machine's memory follows what an import can need, not the pickle's size.

The machine runs in a fresh subprocess on a generated 10M-opcode pickle (a list of 1.25M small
dicts, as pickle.dumps writes them at protocol 4). Its peak RSS is read by a small launcher
process with resource.getrusage(RUSAGE_CHILDREN): not in the test process, whose children
include every subprocess pytest ever waited for, and not by the child itself, since Linux keeps
ru_maxrss across execve and the child starts as a (v)fork of the large pytest process.
Nothing is unpickled: the stream only names os.getcwd, and it is only scanned.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from opbuilder import P

from picklegate.findings import FindingKind
from picklegate.limits import Limits
from picklegate.machine import Mapping, PickleMachine, analyse_pickles

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

# A list of BATCHES * 1000 dicts {"os": i, "getcwd": i}, APPENDS per 1000 as the pickler batches.
# "os" and "getcwd" are memoised at the start (memo 1 and 2); the dicts' keys are BINGETs of
# them, and the very last opcodes are BINGET 1, BINGET 2, STACK_GLOBAL: an import whose operands
# were stored ~10M opcodes earlier.
CHILD = textwrap.dedent("""
    import json, struct
    from picklegate.machine import analyse_pickles

    BATCHES = 1250
    head = b"\\x80\\x04]\\x94" + b"\\x8c\\x02os\\x940" + b"\\x8c\\x06getcwd\\x940"
    parts = [head]
    for b in range(BATCHES):
        one = b"}\\x94(h\\x01J" + struct.pack("<i", b) + b"h\\x02J" + struct.pack("<i", b) + b"u"
        parts.append(b"(" + one * 1000 + b"e")
    sg_at = sum(len(p) for p in parts) + 4
    parts.append(b"h\\x01h\\x02\\x930.")
    data = b"".join(parts)
    del parts
    out = analyse_pickles(data)
    print(json.dumps({
        "opcodes": 6 + 2 * 3 + BATCHES * (2 + 8 * 1000) + 5,
        "sg_at": sg_at,
        "bytes": len(data),
        "imports": [[r.module, r.name, r.offset, r.opcode, r.count] for r in out.imports],
        "findings": [[f.kind.value, f.offset, f.message] for f in out.findings],
        "completed": out.completed,
    }))
""")
LAUNCHER = textwrap.dedent("""
    import json, resource, subprocess, sys
    done = subprocess.run([sys.executable, "-c", sys.argv[1]], capture_output=True, text=True,
                          check=True)
    result = json.loads(done.stdout)
    result["peak_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result))
""")


@pytest.fixture(scope="module")
def ten_million() -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-c", LAUNCHER, CHILD], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_pickle_is_ten_million_opcodes(ten_million: dict[str, Any]) -> None:
    assert ten_million["opcodes"] >= 10_000_000
    assert ten_million["completed"] == 1


def test_peak_rss_is_bounded(ten_million: dict[str, Any]) -> None:
    """Before: ~55 MiB per million opcodes (every memoised dict and its items kept)."""
    assert ten_million["peak_mib"] < 100, ten_million["peak_mib"]


def test_stack_global_from_memo_entries_stored_10m_opcodes_earlier(
        ten_million: dict[str, Any]) -> None:
    """Bounding memory dropped the dicts' contents, not the memoised strings an import needs:
    the final STACK_GLOBAL is resolved exactly, and nothing is reported."""
    assert ten_million["imports"] == [["os", "getcwd", ten_million["sg_at"], "STACK_GLOBAL", 1]]
    assert ten_million["findings"] == []


# ---------------------------------------------------------------------------------------------
# What the budget of kept items drops fails closed (Limits.max_kept_items, small here)


def _spent_build(special_key: str) -> bytes:
    """Two dicts made after the budget is spent: the first gets ``special_key``, the second
    (no special key at all) is a BUILD state."""
    return (P().proto(2).global_("collections", "OrderedDict").empty_tuple().reduce()
            .empty_dict().short_binunicode(special_key).none().setitem().pop()
            .empty_dict().short_binunicode("x").none().setitem().build().stop().bytes())


@pytest.mark.parametrize("key, flagged", [("__class__", True), ("plain", False)])
def test_spent_dicts_share_a_special_key_and_build_fails_closed(key: str, flagged: bool) -> None:
    out = analyse_pickles(_spent_build(key), limits=Limits(max_kept_items=0))
    abuse = [f.message for f in out.findings if f.kind is FindingKind.BUILD_ABUSE]
    assert bool(abuse) is flagged, out.findings
    if flagged:
        assert "'__class__'" in abuse[0] and "budget of kept items" in abuse[0]


def test_within_the_budget_only_the_dict_with_the_key_is_flagged() -> None:
    out = analyse_pickles(_spent_build("__class__"))
    assert [f.kind for f in out.findings] == []


def test_a_spent_dict_is_a_dict_with_dropped_items() -> None:
    seen: list[object] = []

    def hook(m: PickleMachine, inst: object, state: object) -> None:
        seen.append(state)

    data = (P().proto(2).global_("collections", "OrderedDict").empty_tuple().reduce()
            .empty_dict().short_binunicode("shape").none().setitem().build().stop().bytes())
    analyse_pickles(data, limits=Limits(max_kept_items=0), on_build=hook)
    assert len(seen) == 1 and isinstance(seen[0], Mapping)
    assert seen[0].shared and seen[0].dropped and seen[0].items == []


def test_joblib_wrapper_state_beyond_the_budget_is_a_finding() -> None:
    """joblib reads shape/dtype/order from the wrapper's state dict: once the budget is spent
    that dict is not kept, and the array cannot be stepped over, so the file is not passed."""
    joblib = pytest.importorskip("joblib")
    numpy = pytest.importorskip("numpy")
    import io

    from formats.conftest import scan

    handle = io.BytesIO()
    joblib.dump({"w": numpy.arange(6.0)}, handle)
    assert scan(handle.getvalue(), "model.joblib").findings == ()
    result = scan(handle.getvalue(), "model.joblib", max_kept_items=0)
    messages = [f.message for f in result.findings]
    assert any("wrapper's state cannot be read statically" in m for m in messages), messages


# ---------------------------------------------------------------------------------------------
# Issue 9 in the machine: repeats, huge names, many-part names


def test_an_import_repeated_a_million_times_is_one_record_with_its_count() -> None:
    one = P().global_("os", "getcwd").pop()
    data = P().proto(2).raw(one.bytes() * 1_000_000).none().stop().bytes()
    out = analyse_pickles(data)
    assert [(r.module, r.name, r.offset, r.opcode, r.count) for r in out.imports] == [
        ("os", "getcwd", 2, "GLOBAL", 1_000_000)]


def test_repeat_counts_reach_the_merged_finding() -> None:
    from formats.conftest import policy

    from picklegate.scan import scan_bytes

    one = P().global_("os", "getcwd").pop()
    sg = P().short_binunicode("os").short_binunicode("getcwd").stack_global().pop()
    data = P().proto(4).raw(one.bytes() * 3 + sg.bytes() * 4).none().stop().bytes()
    result = scan_bytes(data, policy(), path="x.pkl")
    assert [(f.kind, f.module, f.name, f.offset, f.count) for f in result.findings] == [
        (FindingKind.GADGET, "os", "getcwd", 2, 7)]
    # one GLOBAL record and one STACK_GLOBAL record; the JSON inventory adds their counts
    assert [(r.opcode, r.count) for r in result.inventory.imports] == [
        ("GLOBAL", 3), ("STACK_GLOBAL", 4)]
    from picklegate.findings import ScanResult
    from picklegate.report.json import document

    [entry] = document(ScanResult((result,), "test"))["files"][0]["imports"]
    assert (entry["module"], entry["name"], entry["offset"], entry["count"]) == (
        "os", "getcwd", 2, 7)


@pytest.mark.parametrize("which", ["module", "name"])
@pytest.mark.parametrize("op", ["global_", "inst"])
def test_a_name_line_over_max_name_bytes_is_skipped_and_reported(which: str, op: str) -> None:
    long = "m" * 5000
    module, name = (long, "x") if which == "module" else ("os", long)
    body = P().proto(2)
    if op == "inst":
        body = body.mark()
    body = getattr(body, op)(module, name)
    at = 2 + (op == "inst")
    data = body.pop().global_("os", "getcwd").stop().bytes()
    out = analyse_pickles(data, limits=Limits(max_name_bytes=4096))
    opname = op.rstrip("_").upper()
    assert [(f.kind, f.offset) for f in out.findings] == [(FindingKind.LIMIT, at)]
    assert f"{opname} names a {len(long)}-byte name" in out.findings[0].message
    assert out.first_error == at            # a loader fails at that import
    # carried on: the next GLOBAL is read from the right byte
    assert [(r.module, r.name) for r in out.imports] == [("os", "getcwd")]
    assert out.completed == 1


def test_a_name_line_of_many_megabytes_is_never_materialised() -> None:
    """Counted, not timed: the machine reads the line with one find and no copy of it."""
    from formats.build import CountingBuffer

    data = P().proto(2).raw(b"c" + b"m" * (64 << 20) + b"\nx\n").pop().none().stop().bytes()
    buf = CountingBuffer(data)
    out = analyse_pickles(buf)  # type: ignore[arg-type]
    assert [f.kind for f in out.findings] == [FindingKind.LIMIT]
    # the find over the line, plus a few bytes per opcode: no slice of it
    assert buf.examined < (64 << 20) + 200


def test_a_dotted_name_with_100000_parts() -> None:
    """map_python2_name and the recorded import are linear in the name: one dict lookup."""
    module = ".".join(["p"] * 100_000)
    data = P().proto(2).global_(module, "x").pop().none().stop().bytes()
    out = analyse_pickles(data, limits=Limits(max_name_bytes=1 << 20))
    assert [(r.module, r.name) for r in out.imports] == [(module, "x")]
    assert out.findings == []
