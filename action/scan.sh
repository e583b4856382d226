#!/usr/bin/env bash
# The commands the GitHub Action runs (action.yml passes its inputs as PICKLEGATE_* variables).
# Kept as a script so tests can run exactly this in a temporary repository.
#
# One scan: the job log gets PICKLEGATE_FORMAT and, when PICKLEGATE_SARIF is set, the same
# result is also written as SARIF to that file. The exit status is picklegate's own
# (0 clean, 1 findings, 2 error).
set -uo pipefail

args=(scan --format "${PICKLEGATE_FORMAT:-github}")
if [ -n "${PICKLEGATE_SARIF:-}" ]; then
    args+=(--output "sarif=$PICKLEGATE_SARIF")
fi
if [ -n "${PICKLEGATE_POLICY:-}" ]; then
    args+=(--policy "$PICKLEGATE_POLICY")
fi
if [ -n "${PICKLEGATE_PATHS:-}" ]; then
    read -r -a paths <<< "$PICKLEGATE_PATHS"
    args+=(-- "${paths[@]}")
elif [ -n "${PICKLEGATE_DIFF_BASE:-}" ]; then
    args+=(--diff "${PICKLEGATE_DIFF_BASE}...HEAD" --policy-from "${PICKLEGATE_POLICY_FROM:-base}")
else
    echo "picklegate action: set diff-base (or run on pull_request) or paths" >&2
    exit 2
fi

exec picklegate "${args[@]}"
