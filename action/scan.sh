#!/usr/bin/env bash
# The commands the GitHub Action runs (action.yml passes its inputs as PICKLEGATE_* variables).
# Kept as a script so tests can run exactly this in a temporary repository.
set -uo pipefail

args=(scan)
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

status=0
if [ -n "${PICKLEGATE_SARIF:-}" ]; then
    picklegate "${args[@]:0:1}" --format sarif --output "$PICKLEGATE_SARIF" "${args[@]:1}" >/dev/null
    status=$?
    if [ "$status" -eq 2 ]; then
        exit 2
    fi
fi
picklegate "${args[@]:0:1}" --format "${PICKLEGATE_FORMAT:-github}" "${args[@]:1}"
log_status=$?
[ "$log_status" -gt "$status" ] && status=$log_status
exit "$status"
