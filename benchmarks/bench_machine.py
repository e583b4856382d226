"""Nanoseconds per opcode of the symbolic machine, against pickletools.genops in the same run.

    python benchmarks/bench_machine.py [--scale 1.0] [--repeat 3]

Opcode-dense pickles only (small values, many opcodes), where the per-opcode cost of the loop
is what is measured; payload-heavy files are benchmarks/bench_scan.py's business. Each case is
timed in-process in CPU time (time.process_time: both are single-threaded, and CPU time does not
count the waits of a shared machine), best of ``--repeat`` runs. genops is the baseline every
static scanner is built on: it decodes each argument but models no stack or memo. Nothing is
ever unpickled.
"""
from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import pickletools
import sys
import time
import zipfile
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from picklegate.machine import analyse_pickles


def _records(n: int) -> list[object]:
    return [{"a": i, "b": [i, str(i)], "c": (i, 1.5)} for i in range(n)]


def _nested(n: int) -> object:
    # Nested dicts and lists a few levels deep, shared substructures through the memo.
    leaf = {"x": [1, 2, 3], "y": {"z": (4, 5)}}
    return [{f"k{i}": [leaf, {"i": i, "s": f"v{i}", "l": [i, i + 1, [i, (i,)]]}]}
            for i in range(n)]


def _state_dict(n: int) -> bytes:
    """torch.save's data.pkl for a state_dict of ``n`` small tensors (persistent ids, a
    _rebuild_tensor_v2 REDUCE per tensor), or an imitation with the same opcodes."""
    try:
        import torch
    except ImportError:   # pragma: no cover - torch is in the dev environment
        class Rebuild:
            def __init__(self, i: int) -> None:
                self.i = i

            def __reduce__(self) -> tuple[object, ...]:
                return (collections.OrderedDict, ((("storage", str(self.i)), ("shape", (2, 3))),))
        return pickle.dumps(collections.OrderedDict((f"layer{i}.weight", Rebuild(i))
                                                    for i in range(n)), 2)
    state = collections.OrderedDict((f"layer{i}.weight", torch.zeros(2, 3)) for i in range(n))
    handle = io.BytesIO()
    torch.save(state, handle)
    with zipfile.ZipFile(io.BytesIO(handle.getvalue())) as archive:
        name = next(x for x in archive.namelist() if x.endswith("data.pkl"))
        return archive.read(name)


def cases(scale: float) -> dict[str, bytes]:
    n = max(1, int(50_000 * scale))
    return {
        "records-p0": pickle.dumps(_records(n), 0),
        "records-p2": pickle.dumps(_records(n), 2),
        "records-p4": pickle.dumps(_records(n), 4),
        "records-p5": pickle.dumps(_records(n), 5),
        "nested-p4": pickle.dumps(_nested(n // 2), 4),
        "state_dict": _state_dict(n // 5),
    }


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'case':<12} {'opcodes':>9} {'machine':>12} {'genops':>12} {'ratio':>6}")
    for name, data in cases(args.scale).items():
        opcodes = sum(1 for _ in pickletools.genops(data))
        out = analyse_pickles(data)
        assert out.completed == 1 and not out.findings, (name, out.findings[:3])
        machine = best(lambda data=data: analyse_pickles(data), args.repeat)
        genops = best(lambda data=data: sum(1 for _ in pickletools.genops(data)), args.repeat)
        m_ns, g_ns = machine / opcodes * 1e9, genops / opcodes * 1e9
        print(f"{name:<12} {opcodes:>9} {m_ns:>9.0f} ns {g_ns:>9.0f} ns {m_ns / g_ns:>6.2f}")


if __name__ == "__main__":
    main()
