"""picklegate against picklescan and modelscan, on the same files, in the same run.

    python benchmarks/bench_peers.py --corpus DIR [--quick] [--runs 5] [--only NAME,...]

Builds (once; reused when DIR already holds it) a corpus with the real libraries: a multi-GB
torch zip (--quick: 256 MB), a torch zip with 20,000 tensors, a legacy (non-zip) torch
checkpoint, a fitted scikit-learn forest written by joblib uncompressed, with zlib and with lz4,
a 1 GB pickle of inline bytes at protocols 4 and 5 (--quick: 128 MB), a nested pickle of about
4.7 million opcodes (--quick: a tenth) and a directory of 2,000 small checkpoints (--quick:
200). Every file is benign: nothing here builds, loads or unpickles anything malicious, and
nothing is ever unpickled by this script.

Each tool runs as a whole process (interpreter start-up included: that is what a hook pays),
in a fresh subprocess per run, paired: every run of every tool on a case happens in the same
round. Wall time is the median of the runs; peak RSS is the largest of the process and its
waited-for children (os.wait4; picklegate's --jobs workers count as their own maximum, not a
sum). Each tool's exit code and verdict are recorded; a run that errored (exit 2+, or a
verdict that is not clean/flagged) is marked ERR and never enters a ratio.

picklescan and modelscan come from the `bench` extra (pip install -e .[bench]); a tool that is
not installed is left out of the table. The table is Markdown, ready to paste into the README.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


# ---------------------------------------------------------------------------------------------
# corpus


@dataclass(frozen=True)
class Case:
    name: str
    path: str          # relative to the corpus directory
    what: str


def cases(quick: bool) -> list[Case]:
    big = "256 MB" if quick else "2 GB"
    inline = "128 MB" if quick else "1 GB"
    ops = "0.47M" if quick else "4.7M"
    small = 200 if quick else 2000
    return [
        Case("torch-big", "torch_big.pt", f"torch.save zip, {big} of float32 tensors"),
        Case("torch-20k", "torch_20k.pt", "torch.save zip, 20,000 small tensors"),
        Case("torch-legacy", "torch_legacy.pt", "torch.save legacy (non-zip), 8 MB"),
        Case("joblib-raw", "forest.joblib", "sklearn RandomForest (50 trees), joblib.dump"),
        Case("joblib-zlib", "forest.joblib.z", "the same, compress=('zlib', 3)"),
        Case("joblib-lz4", "forest.joblib.lz4", "the same, compress='lz4'"),
        Case("bytes-p4", "inline_p4.pkl", f"pickle protocol 4, {inline} inline bytes"),
        Case("bytes-p5", "inline_p5.pkl", f"pickle protocol 5, {inline} inline bytearray"),
        Case("opcodes", "nested.pkl", f"nested lists, ~{ops} opcodes, protocol 4"),
        Case("many-small", "small", f"directory of {small} torch.save checkpoints (2 KB)"),
    ]


def build(corpus: Path, quick: bool) -> None:
    """Write every missing file of the corpus (a marker file records quick or full)."""
    corpus.mkdir(parents=True, exist_ok=True)
    marker = corpus / ("QUICK" if quick else "FULL")
    other = corpus / ("FULL" if quick else "QUICK")
    if other.exists():
        raise SystemExit(f"{corpus} holds the {'full' if quick else 'quick'} corpus; use "
                         "another directory")
    # The policy a team with these models would have: picklegate reads it from the corpus
    # directory (each run's working directory), so every verdict is about the file itself.
    policy = corpus / ".picklegate.yaml"
    if not policy.exists():
        policy.write_text("version: 1\nextends: [builtins-safe, torch, numpy, sklearn]\n",
                          encoding="utf-8")
    import joblib
    import numpy as np
    import torch
    from sklearn.ensemble import RandomForestClassifier

    def need(name: str) -> Path | None:
        path = corpus / name
        return None if path.exists() else path

    torch.manual_seed(0)
    if path := need("torch_big.pt"):
        total = (256 if quick else 2048) << 20
        count = 64
        each = total // count // 4
        torch.save({f"layer{i}.weight": torch.ones(each) for i in range(count)}, path)
    if path := need("torch_20k.pt"):
        torch.save({f"t{i}": torch.full((4,), float(i)) for i in range(20_000)}, path)
    if path := need("torch_legacy.pt"):
        torch.save({"w": torch.ones(2 << 20), "b": torch.zeros(16)}, path,
                   _use_new_zipfile_serialization=False)
    forest = None
    for name, compress in (("forest.joblib", 0), ("forest.joblib.z", ("zlib", 3)),
                           ("forest.joblib.lz4", "lz4")):
        if path := need(name):
            if forest is None:
                rng = np.random.default_rng(0)
                x = rng.normal(size=(2000, 20))
                forest = RandomForestClassifier(n_estimators=50, random_state=0).fit(
                    x, (x[:, 0] > 0).astype(int))
            joblib.dump(forest, path, compress=compress)
    size = (128 if quick else 1024) << 20
    if path := need("inline_p4.pkl"):
        with open(path, "wb") as handle:
            pickle.dump({"blob": bytes(size)}, handle, protocol=4)
    if path := need("inline_p5.pkl"):
        with open(path, "wb") as handle:
            pickle.dump({"blob": bytearray(size)}, handle, protocol=5)
    if path := need("nested.pkl"):
        rows = 78_000 if quick else 780_000         # 6 opcodes a row, plus the outer APPENDS
        with open(path, "wb") as handle:
            pickle.dump([[i, i + 0.5] for i in range(rows)], handle, protocol=4)
    small = corpus / "small"
    if not small.exists():
        part = corpus / "small.partial"
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        for i in range(200 if quick else 2000):
            torch.save({"w": torch.full((8,), float(i)), "step": i}, part / f"ckpt{i:04}.pt")
        part.rename(small)
    marker.touch()


# ---------------------------------------------------------------------------------------------
# tools


@dataclass(frozen=True)
class Tool:
    name: str
    argv: tuple[str, ...]          # the path is appended
    errors_from: int               # exit codes from this up are errors

    def available(self) -> bool:
        return shutil.which(self.argv[0]) is not None or self.argv[0] == sys.executable


def tools() -> list[Tool]:
    venv_bin = Path(sys.executable).parent
    found = [Tool("picklegate", (sys.executable, "-m", "picklegate", "scan"), 2)]
    for name, args in (("picklescan", ("-p",)), ("modelscan", ("-p",))):
        exe = venv_bin / name
        command = str(exe) if exe.exists() else shutil.which(name)
        if command:
            found.append(Tool(name, (command, *args), 2))
    return found


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_mb: float
    code: int
    verdict: str


def run_once(tool: Tool, target: Path) -> Run:
    # Bytecode caches on, as in any installed package (a checkout run with
    # PYTHONDONTWRITEBYTECODE would recompile picklegate on every run, but not the peers).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=str(SRC), NO_COLOR="1")
    start = time.perf_counter()
    process = subprocess.Popen((*tool.argv, str(target)), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=env, cwd=target.parent)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    code = process.returncode
    return Run(seconds, usage.ru_maxrss / 1024, code, verdict(tool, code, output))


def verdict(tool: Tool, code: int, output: bytes) -> str:
    if code >= tool.errors_from or code < 0:
        tail = output.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return f"ERR: {tail[0][:60]}"
    return "flagged" if code == 1 else "clean"


# ---------------------------------------------------------------------------------------------
# table


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def measure(corpus: Path, chosen: list[Case], runs: int) -> list[str]:
    available = tools()
    names = [t.name for t in available]
    lines = ["| case | " + " | ".join(f"{n} time | {n} RSS | {n} verdict" for n in names)
             + " | " + " | ".join(f"pg/{n} time" for n in names[1:]) + " |",
             "|" + "---|" * (1 + 3 * len(names) + len(names) - 1)]
    for case in chosen:
        target = corpus / case.path
        rounds: dict[str, list[Run]] = {t.name: [] for t in available}
        for tool in available:                       # warm the page and bytecode caches
            run_once(tool, target)
        for _ in range(runs):
            for tool in available:
                rounds[tool.name].append(run_once(tool, target))
        cells, medians = [], {}
        for tool in available:
            done = rounds[tool.name]
            ok = all(not r.verdict.startswith("ERR") for r in done)
            verdicts = sorted({f"{r.verdict} ({r.code})" for r in done})
            median = statistics.median(r.seconds for r in done)
            peak = max(r.peak_mb for r in done)
            mark = "" if ok else " ERR"
            cells += [f"{fmt_time(median)}{mark}", f"{peak:.0f} MB", "; ".join(verdicts)]
            medians[tool.name] = median if ok else None
        ratios = []
        base = medians["picklegate"]
        for name in names[1:]:
            peer = medians[name]
            ratios.append("n/a (ERR)" if base is None or peer is None else f"{base / peer:.2f}")
        lines.append(f"| {case.name} | " + " | ".join(cells + ratios) + " |")
        print(lines[-1], file=sys.stderr, flush=True)       # progress
    return lines


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        ram = int(Path("/proc/meminfo").read_text().split()[1]) / (1 << 20)
    except OSError:
        ram = 0.0
    return (f"{os.cpu_count()} CPUs ({model}), {ram:.0f} GB RAM, Python "
            f"{platform.python_version()}, {platform.system()}")


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version
    out = []
    for name in ("picklegate", "picklescan", "modelscan", "torch", "numpy", "scikit-learn"):
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{name} {version(name)}")
    return ", ".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, type=Path, help="where the corpus is built")
    parser.add_argument("--quick", action="store_true", help="a smaller corpus (minutes)")
    parser.add_argument("--runs", type=int, default=5, help="paired runs per case (median)")
    parser.add_argument("--only", help="comma-separated case names")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_only:
        build(args.corpus, args.quick)
        return 0
    all_cases = cases(args.quick)
    chosen = [c for c in all_cases if not args.only or c.name in args.only.split(",")]
    start = time.perf_counter()
    # In a child: Linux keeps a process's peak RSS across fork and exec, so every tool started
    # from a parent that had imported torch would report torch's footprint as its own.
    subprocess.run((sys.executable, __file__, "--build-only", "--corpus", str(args.corpus),
                    *(["--quick"] if args.quick else [])), check=True)
    built = time.perf_counter() - start
    print(f"corpus ready in {built:.0f} s", file=sys.stderr)
    lines = measure(args.corpus, chosen, args.runs)
    print(f"Measured {dt.date.today().isoformat()} on {machine()}; {versions()}. "
          f"{'Quick' if args.quick else 'Full'} corpus, median of {args.runs} paired "
          "whole-process runs; RSS is the peak of any run; `pg/x` < 1 means picklegate is "
          "faster; ERR marks a tool that failed on the file (never compared).\n")
    print("\n".join(lines))
    print("\n| case | file |\n|---|---|")
    for case in chosen:
        print(f"| {case.name} | {case.what} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
