#!/usr/bin/env bash
# Builds the pinned control plane from e2e/go.mod into e2e/.cache/bin, and installs helm + kubectl
# (e2e/install-helm.sh). Usage:
#
#   e2e/build.sh              kube-apiserver, kube-controller-manager, kube-scheduler, kwok, etcd
#   e2e/build.sh kwok         only the named binaries (the kind path needs kwok alone)
#
# Rebuilt only when the pins change: each binary has a stamp holding the sha256 of go.mod, go.sum and
# this script. Cold build time on this project's 2-core machines: see e2e/README.md. Go's build cache
# (GOCACHE) makes a rebuild after a pin bump much faster.
set -euo pipefail

E2E_DIR="$(cd "$(dirname "$0")" && pwd)"
BIN_DIR="$E2E_DIR/.cache/bin"
# Binary name -> Go package (all listed as `tool` in go.mod, so go.sum covers them). etcd 3.5's
# server module root is its `main` package.
declare -A PACKAGES=(
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
  [kwok]=sigs.k8s.io/kwok/cmd/kwok
  [etcd]=go.etcd.io/etcd/server/v3
)
ALL_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kwok etcd)

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=("${ALL_BINARIES[@]}")
for b in "${wanted[@]}"; do
  [ -n "${PACKAGES[$b]:-}" ] || {
    echo "build: unknown binary '$b' (one of: ${ALL_BINARIES[*]})" >&2
    exit 2
  }
done

"$E2E_DIR/install-helm.sh" >/dev/null

pins="$(cat "$E2E_DIR/go.mod" "$E2E_DIR/go.sum" "$E2E_DIR/build.sh" | sha256sum | cut -d' ' -f1)"
stale=()
for b in "${wanted[@]}"; do
  if [ ! -x "$BIN_DIR/$b" ] || [ "$(cat "$BIN_DIR/.$b.sha256" 2>/dev/null)" != "$pins" ]; then stale+=("$b"); fi
done
if [ ${#stale[@]} -eq 0 ]; then
  echo "build: ${wanted[*]} up to date in $BIN_DIR"
  exit 0
fi

if ! command -v go >/dev/null; then
  echo "build: the go toolchain is required (e2e/go.mod says which version) to build ${stale[*]}" >&2
  exit 1
fi

mkdir -p "$BIN_DIR"
cd "$E2E_DIR"
# Static binaries without cgo, as Kubernetes' own release build of these components; -trimpath and
# stripped symbols keep the link step short on a small machine. -mod=readonly: go.sum is the pin.
export CGO_ENABLED=0
build_flags=(-mod=readonly -trimpath)
# Kubernetes' release build stamps its version into component-base (what /version and kubectl report,
# and what the API server's compatibility checks read); we stamp the pinned version the same way.
kube_version="$(go list -mod=readonly -m -f '{{.Version}}' k8s.io/kubernetes)"
kube_minor="$(echo "$kube_version" | cut -d. -f2)"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean"
done

start_s=$(date +%s)
kube_packages=()
for b in "${stale[@]}"; do [ "$b" = etcd ] || kube_packages+=("${PACKAGES[$b]}"); done
if [ ${#kube_packages[@]} -gt 0 ]; then
  echo "build: go build ${kube_packages[*]} -> $BIN_DIR ($(go version))" >&2
  # One invocation for all of them: their shared packages compile once.
  go build "${build_flags[@]}" -ldflags="$kube_ldflags" -o "$BIN_DIR/" "${kube_packages[@]}"
fi
for b in "${stale[@]}"; do
  if [ "$b" = etcd ]; then
    # Built on its own to name the binary `etcd` (go would name it after the module's last element).
    echo "build: go build ${PACKAGES[etcd]} -> $BIN_DIR/etcd" >&2
    go build "${build_flags[@]}" -ldflags="-s -w" -o "$BIN_DIR/etcd" "${PACKAGES[etcd]}"
  fi
  echo "$pins" >"$BIN_DIR/.$b.sha256"
done
echo "build: built ${stale[*]} in $(($(date +%s) - start_s)) s"
