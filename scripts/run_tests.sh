#!/usr/bin/env bash
# The whole suite: unit, in-process host and end-to-end server tests. Used by `make test` and CI.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: the suite is empty, which is a failure for this project" >&2
  exit 1
fi
exit "$status"
