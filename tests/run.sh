#!/usr/bin/env bash
# Runs the whole pytest suite around a private e2e cluster: build the control plane (cached), start it
# (e2e/cluster.sh up), run pytest, stop it (e2e/cluster.sh down) whatever happened, leaving no process.
# Installs the engine tier's vLLM engine first (cached). pytest's exit code 5 ("no tests collected")
# counts as a failure here: a CI run that tests nothing must not look green. CHIPFIT_E2E=0 skips the
# cluster (e2e tests then skip locally, fail on CI).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

if [ "${CHIPFIT_E2E:-1}" != 0 ]; then
  # A run folder of our own: ports are picked free, so a developer's cluster (e2e/.run) or another
  # work tree's run does not clash with this one, and `down` stops only what this run started.
  export CHIPFIT_E2E_RUN_DIR="$PWD/e2e/.run/test-$$"
  down_failed=0
  cleanup() {
    if ! bash e2e/cluster.sh down >/dev/null; then
      echo "tests/run.sh: e2e/cluster.sh down failed; processes may be left (see $CHIPFIT_E2E_RUN_DIR/pids)" >&2
      down_failed=1
    fi
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM # exit through the EXIT trap
  if ! bash e2e/cluster.sh up >/dev/null; then
    echo "tests/run.sh: the e2e cluster did not come up (logs: $CHIPFIT_E2E_RUN_DIR/logs)" >&2
    export CHIPFIT_E2E_NO_UP=1 # the fixture must not retry: e2e tests fail on CI, skip locally
  fi
  # The real Prometheus server of tests/e2e/test_prometheus.py (Debian package; no-op when installed).
  # Without it that test fails on CI and skips locally, so a failure here is reported, not fatal.
  if ! bash e2e/install-prometheus.sh >/dev/null; then
    echo "tests/run.sh: e2e/install-prometheus.sh failed; tests/e2e/test_prometheus.py cannot run" >&2
  fi
fi

# The engine tier's real vLLM CPU engine, tiny model and SGLang parser (e2e/install-engine.sh): pinned, and
# cached outside the work tree by pin hash, so only a machine's first run downloads (~3 GB, minutes); later
# runs return in under a second. Without it the engine tests fail on CI and skip locally.
# CHIPFIT_ENGINE=0 skips the install (tests/engine then skips locally, fails on CI).
if [ "${CHIPFIT_ENGINE:-1}" != 0 ]; then
  engine_start=$SECONDS
  if bash e2e/install-engine.sh >/dev/null; then
    echo "tests/run.sh: engine ready ($((SECONDS - engine_start)) s)" >&2
  else
    echo "tests/run.sh: e2e/install-engine.sh failed; tests/engine cannot run" >&2
  fi
fi

.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "tests/run.sh: pytest collected no tests" >&2
  rc=1
fi
if [ "${CHIPFIT_E2E:-1}" != 0 ]; then
  trap - EXIT
  cleanup
  # A process left behind is a failure too.
  [ "$down_failed" -eq 0 ] || rc=1
  # Keep the component logs of a failed run for the post-mortem; drop those of a green one.
  if [ "$rc" -eq 0 ]; then
    rm -rf "$CHIPFIT_E2E_RUN_DIR"
  else
    echo "tests/run.sh: e2e logs kept in $CHIPFIT_E2E_RUN_DIR/logs" >&2
  fi
fi
exit "$rc"
