"""Coverage-guided fuzzing of picklegate.scan.scan_bytes (picklegate issue 9, point 4).

atheris drives it (pip install atheris); a seed corpus is drawn from tests/fixtures/real and
tests/fixtures/vendored, and a structure-aware mutator edits zip headers (local, central,
end records, zip64), tar headers (with the checksum fixed up, so tarfile still reads them) and
pickle opcodes (insert, delete, replace, length fields) before libFuzzer's byte mutations.

Every input must: produce no internal-error finding, stay within the (small) time budget,
give the same result on a second run, and let no exception escape. Inputs that break one of
these are written to tests/regressions/ (tests/test_regressions.py scans each).

    short run (CI):  tests/fuzz/smoke.sh            (60 s)
    long run:        PYTHONPATH=src python tests/fuzz/harness.py -max_total_time=3600 \\
                         -rss_limit_mb=2048 /tmp/picklegate-corpus
"""
from __future__ import annotations

import hashlib
import pickletools
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REGRESSIONS = ROOT / "tests" / "regressions"
SEED_DIRS = (ROOT / "tests" / "fixtures" / "real", ROOT / "tests" / "fixtures" / "vendored")
MAX_SEED = 256 * 1024          # larger fixtures are cut: the mutator's edits stay meaningful
TIME_BUDGET = 2.0              # the harness's per-file budget, seconds
SLACK = 1.0                    # how far past it a run may finish (the guard looks every 50 ms)


def seeds() -> list[bytes]:
    out = []
    for folder in SEED_DIRS:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix not in (".json", ".md"):
                out.append(path.read_bytes()[:MAX_SEED])
    return out


# ---------------------------------------------------------------------------------------------
# structure-aware mutations

_OPCODE_BYTES = [op.code.encode("latin-1") for op in pickletools.opcodes]
_ZIP_SIGS = (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07")
_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)


def _put(data: bytearray, at: int, size: int, rng: random.Random) -> None:
    if at + size <= len(data):
        value = rng.choice(_INTERESTING) & ((1 << (8 * size)) - 1)
        data[at:at + size] = value.to_bytes(size, "little")


def mutate_zip(data: bytearray, rng: random.Random) -> bool:
    """Set a field of a zip record (sizes, offsets, counts, methods, flags) to an edge value."""
    places = [i for sig in _ZIP_SIGS for i in _find_all(data, sig)]
    if not places:
        return False
    at = rng.choice(places)
    field = rng.choice((4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36,
                        38, 40, 42, 44, 48))
    _put(data, at + field, rng.choice((2, 4, 8)), rng)
    return True


def mutate_tar(data: bytearray, rng: random.Random) -> bool:
    """Rewrite a numeric field of a tar header block and fix its checksum up."""
    blocks = [i for i in range(0, len(data) - 511, 512) if data[i + 257:i + 262] == b"ustar"]
    if not blocks:
        return False
    at = rng.choice(blocks)
    offset, width = rng.choice(((100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (156, 1),
                                (345, 155), (0, 100)))
    if width == 1:
        data[at + offset] = rng.choice(b"0125LKxgS\x00")
    elif width >= 100:
        data[at + offset:at + offset + width] = (b"../" * 40)[:width]
    else:
        text = oct(rng.choice((0, 1, 511, 1 << 20, 1 << 33, 8 ** (width - 1) - 1)))[2:]
        digits = text.encode().rjust(width - 1, b"0")[-(width - 1):]
        data[at + offset:at + offset + width] = digits + b"\0"
    data[at + 148:at + 156] = b" " * 8
    data[at + 148:at + 156] = b"%06o\0 " % (sum(data[at:at + 512]) & 0o777777)
    return True


def mutate_pickle(data: bytearray, rng: random.Random) -> bool:
    """Insert, delete or replace an opcode, or set a length field to an edge value."""
    if not data:
        return False
    at = rng.randrange(len(data))
    choice = rng.randrange(4)
    if choice == 0:
        data[at:at] = rng.choice(_OPCODE_BYTES)
    elif choice == 1:
        del data[at]
    elif choice == 2:
        data[at:at + 1] = rng.choice(_OPCODE_BYTES)
    else:
        _put(data, at + 1, rng.choice((1, 4, 8)), rng)
    return True


def _find_all(data: bytearray, sig: bytes) -> list[int]:
    found, pos = [], data.find(sig)
    while pos != -1 and len(found) < 4096:
        found.append(pos)
        pos = data.find(sig, pos + 1)
    return found


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        rng.choice((mutate_zip, mutate_tar, mutate_pickle))(out, rng)
    return bytes(out[:max_size])


# ---------------------------------------------------------------------------------------------
# the properties


_SETUP: list[object] = []


def _setup() -> tuple[object, object]:
    """The policy and options, loaded once (loading the presets costs ~0.2 s)."""
    if not _SETUP:
        from picklegate.formats.compression import CHUNK
        from picklegate.limits import Limits
        from picklegate.policy import load_presets
        from picklegate.scan import ScanOptions
        _SETUP.append(load_presets(("builtins-safe", "torch", "numpy"), "fuzz"))
        _SETUP.append(ScanOptions(limits=Limits(time_budget=TIME_BUDGET, memory_budget=256,
                                                max_expanded_bytes=16 * CHUNK)))
    return _SETUP[0], _SETUP[1]


def check(data: bytes) -> None:
    from picklegate.findings import FindingKind
    from picklegate.scan import scan_bytes

    policy, options = _setup()
    try:
        started = time.monotonic()
        first = scan_bytes(data, policy, options=options)  # type: ignore[arg-type]
        took = time.monotonic() - started
        second = scan_bytes(data, policy, options=options)  # type: ignore[arg-type]
    except BaseException:
        keep(data, "exception")
        raise
    problems = []
    if any(f.kind is FindingKind.MALFORMED and "could not analyse" in f.message
           for f in first.findings):
        problems.append("internal error: " + next(f.message for f in first.findings
                                                   if "could not analyse" in f.message))
    if took > TIME_BUDGET + SLACK:
        problems.append(f"took {took:.1f} s, past the {TIME_BUDGET} s budget")
    if (first.findings, first.format) != (second.findings, second.format) and not any(
            f.kind is FindingKind.LIMIT and "time budget" in f.message
            for f in first.findings + second.findings):
        problems.append("a second run gave another result")
    if problems:
        keep(data, problems[0].split(":")[0])
        raise AssertionError("; ".join(problems))


def keep(data: bytes, why: str) -> Path:
    REGRESSIONS.mkdir(exist_ok=True)
    path = REGRESSIONS / f"fuzz-{why.replace(' ', '-')}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    return path


def main() -> None:
    import atheris

    with atheris.instrument_imports():
        import picklegate.formats.interpretations
        import picklegate.scan  # noqa: F401 - instrumented for coverage

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        if seed % 2:
            return mutate(data, max_size, seed)
        return bytes(atheris.Mutate(data, max_size))

    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus:
        folder = Path(corpus[0])
        folder.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds()):
            (folder / f"seed-{i:03d}").write_bytes(seed)
    atheris.Setup(sys.argv, check, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
