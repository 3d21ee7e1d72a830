#!/usr/bin/env bash
# Builds the pinned control plane (kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kwok)
# from e2e/go.mod into e2e/.cache/bin, and installs helm + kubectl (e2e/install-helm.sh).
#
# Rebuilt only when the pins change: a stamp holds the sha256 of go.mod, go.sum and this script.
# A cold build takes tens of minutes on 2 cores (see e2e/README.md); Go's build cache
# (GOCACHE) makes a rebuild after a pin bump much faster.
set -euo pipefail

E2E_DIR="$(cd "$(dirname "$0")" && pwd)"
BIN_DIR="$E2E_DIR/.cache/bin"
STAMP="$BIN_DIR/.control-plane.sha256"
# Binary name -> Go package (all listed as `tool` in go.mod, so go.sum covers them).
KUBE_PACKAGES=(
  k8s.io/kubernetes/cmd/kube-apiserver
  k8s.io/kubernetes/cmd/kube-controller-manager
  k8s.io/kubernetes/cmd/kube-scheduler
  sigs.k8s.io/kwok/cmd/kwok
)
# etcd 3.5's server module root is its `main` package; built separately to name the binary `etcd`.
ETCD_PACKAGE=go.etcd.io/etcd/server/v3
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kwok etcd)

"$E2E_DIR/install-helm.sh" >/dev/null

want="$(cat "$E2E_DIR/go.mod" "$E2E_DIR/go.sum" "$E2E_DIR/build.sh" | sha256sum | cut -d' ' -f1)"
all_present=true
for b in "${BINARIES[@]}"; do [ -x "$BIN_DIR/$b" ] || all_present=false; done
if $all_present && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "build: control plane up to date in $BIN_DIR"
  exit 0
fi

if ! command -v go >/dev/null; then
  echo "build: the go toolchain is required (go.mod says which version) to build the control plane" >&2
  exit 1
fi

mkdir -p "$BIN_DIR"
rm -f "$STAMP"
cd "$E2E_DIR"
# Static binaries, no cgo (as Kubernetes' own release build of these components); -trimpath and
# stripped symbols keep the link step short on a small machine. -mod=readonly: go.sum is the pin.
export CGO_ENABLED=0
# Kubernetes' release build stamps its version into component-base (what /version and kubectl report,
# and what the API server's compatibility checks read); we stamp the pinned version the same way.
kube_version="$(go list -mod=readonly -m -f '{{.Version}}' k8s.io/kubernetes)"
kube_minor="$(echo "$kube_version" | cut -d. -f2)"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean"
done
build_flags=(-mod=readonly -trimpath)
start_s=$(date +%s)
echo "build: go build ${KUBE_PACKAGES[*]} -> $BIN_DIR ($(go version))"
go build "${build_flags[@]}" -ldflags="$kube_ldflags" -o "$BIN_DIR/" "${KUBE_PACKAGES[@]}"
echo "build: go build $ETCD_PACKAGE -> $BIN_DIR/etcd"
go build "${build_flags[@]}" -ldflags="-s -w" -o "$BIN_DIR/etcd" "$ETCD_PACKAGE"
echo "$want" >"$STAMP"
echo "build: control plane built in $(($(date +%s) - start_s)) s"
