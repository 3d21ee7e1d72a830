#!/usr/bin/env bash
# Installs a real Prometheus server (the Debian package `prometheus`) for the e2e metrics test
# (tests/e2e/test_prometheus.py evaluates every dashboard query against it).
#
# Idempotent: returns at once when /usr/bin/prometheus exists. Needs root (CI runs as root) and
# reaches only the Debian mirrors. The package's systemd service is not used: the test runs the
# binary itself on a free loopback port and stops it; `policy-rc.d` keeps the maintainer scripts
# from starting the service on machines where invoke-rc.d would.
# Usage: e2e/install-prometheus.sh            (prints the prometheus path on success)
set -euo pipefail

PROMETHEUS_BIN="/usr/bin/prometheus"
PACKAGE="prometheus"

if [ -x "$PROMETHEUS_BIN" ]; then
  echo "$PROMETHEUS_BIN"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-prometheus: $PROMETHEUS_BIN is missing and installing $PACKAGE needs root" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Exit 101 from policy-rc.d = "action forbidden": the package must not start its service here.
policy="/usr/sbin/policy-rc.d"
policy_ours=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  policy_ours=1
fi
trap '[ "$policy_ours" -eq 0 ] || rm -f "$policy"' EXIT

install_package() { apt-get install -y --no-install-recommends "$PACKAGE" >&2; }
# Try without refreshing the package lists first (fast when they are current); refresh only on failure.
if ! install_package; then
  echo "install-prometheus: install failed; running apt-get update and retrying" >&2
  apt-get update >&2
  install_package
fi

if [ ! -x "$PROMETHEUS_BIN" ]; then
  echo "install-prometheus: $PACKAGE installed but $PROMETHEUS_BIN is missing" >&2
  exit 1
fi
echo "install-prometheus: $("$PROMETHEUS_BIN" --version 2>&1 | head -n 1)" >&2
echo "$PROMETHEUS_BIN"
