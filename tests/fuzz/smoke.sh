#!/bin/sh
# A 60-second fuzzing run over picklegate.scan.scan_bytes (tests/fuzz/harness.py), for CI.
# Needs atheris (pip install atheris). Findings land in tests/regressions/.
set -eu
cd "$(dirname "$0")/../.."
corpus="${TMPDIR:-/tmp}/picklegate-fuzz-corpus"
PYTHONPATH=src exec "${PYTHON:-python}" tests/fuzz/harness.py -max_total_time="${FUZZ_SECONDS:-60}" \
    -rss_limit_mb=2048 -timeout=10 -max_len=65536 "$corpus"
