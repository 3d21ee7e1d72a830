#!/usr/bin/env bash
# Runs the whole pytest suite. pytest's exit code 5 ("no tests collected") counts as a failure here:
# a CI run that tests nothing must not look green.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "tests/run.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
