"""Speed and memory of picklegate's analysis, against pickletools.genops in the same run.

    python benchmarks/bench_scan.py [--size-mb 200]

Each case runs in a fresh subprocess so its peak RSS is its own. genops is the baseline
because every static scanner that does not run the pickle VM is built on it; it materialises
every argument, which is what picklegate avoids for large payloads. Nothing is ever unpickled.
Prints a table: seconds, MB/s, peak RSS, and the ratio to the baseline.
"""
from __future__ import annotations

import argparse
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time

CASES = ("payload", "opcodes")


def make(case: str, path: str, size_mb: int) -> None:
    """Write a benign pickle: large byte payloads, or many small opcodes."""
    if case == "payload":
        chunk = os.urandom(1 << 20)
        data = {f"t{i}": chunk * 4 for i in range(max(1, size_mb // 4))}
    else:
        data = [{"k": i, "s": str(i), "f": i / 3} for i in range(size_mb * 20_000)]
    with open(path, "wb") as handle:
        pickle.dump(data, handle, protocol=4)


def run_one(tool: str, path: str) -> None:
    start = time.perf_counter()
    if tool == "genops":
        import pickletools
        with open(path, "rb") as handle:
            count = sum(1 for _ in pickletools.genops(handle))
        detail = f"{count} opcodes"
    else:
        from picklegate.policy import default_policy
        from picklegate.scan import scan_sources
        from picklegate.sources import file_sources
        result = scan_sources(file_sources([path], None), default_policy())
        detail = result.files[0].status.value
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{seconds:.3f} {peak_mb:.1f} {detail}")


def measure(tool: str, path: str) -> tuple[float, float, str]:
    out = subprocess.run((sys.executable, __file__, "--run", tool, path), check=True,
                         capture_output=True, text=True).stdout.split(maxsplit=2)
    return float(out[0]), float(out[1]), out[2].strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--run", nargs=2, metavar=("TOOL", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--make", nargs=3, metavar=("CASE", "PATH", "MB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_one(*args.run)
        return
    if args.make:
        make(args.make[0], args.make[1], int(args.make[2]))
        return
    print(f"{'case':10} {'tool':10} {'MB':>7} {'seconds':>8} {'MB/s':>8} {'peak RSS MB':>12} "
          f"{'time x':>7} {'RSS x':>6}  result")
    with tempfile.TemporaryDirectory() as folder:
        for case in CASES:
            path = os.path.join(folder, f"{case}.pkl")
            # Made in a subprocess: a child inherits its parent's peak RSS across fork/exec.
            mb = args.size_mb if case == "payload" else max(1, args.size_mb // 20)
            subprocess.run((sys.executable, __file__, "--make", case, path, str(mb)), check=True)
            size = os.path.getsize(path) / 1e6
            base = measure("genops", path)
            for tool, (secs, rss, detail) in (("genops", base),
                                              ("picklegate", measure("picklegate", path))):
                print(f"{case:10} {tool:10} {size:7.1f} {secs:8.3f} {size / secs:8.1f} "
                      f"{rss:12.1f} {secs / base[0]:7.2f} {rss / base[1]:6.2f}  {detail}")


if __name__ == "__main__":
    main()
