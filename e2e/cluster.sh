#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for chipfit's integration and e2e tests, without Docker:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake GPU nodes and pods),
# built by e2e/build.sh. Usage:
#
#   e2e/cluster.sh up       build (cached), start everything, register the fake GPU fleet, wait healthy
#   e2e/cluster.sh down     stop exactly the processes `up` started (by recorded PID), remove state
#   e2e/cluster.sh status   print each component's PID and health; exit 0 only when all are healthy
#
# The admin kubeconfig is written to e2e/.run/kubeconfig (override the folder with CHIPFIT_E2E_RUN_DIR).
# Ports are picked free at `up` time, so clusters of several work trees can run side by side.
#
# Other clusters (issue 5, point 7): with CHIPFIT_E2E_KUBECONFIG=<file> `up` uses that cluster, and
# with CHIPFIT_E2E_KIND=1 (or auto when `docker info` works and kind is on PATH) it creates a kind
# cluster. In both, kwok runs here against that cluster to keep the same fake GPU fleet alive.
set -euo pipefail

E2E_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO_DIR="$(cd "$E2E_DIR/.." && pwd)"
BIN_DIR="$E2E_DIR/.cache/bin"
RUN_DIR="${CHIPFIT_E2E_RUN_DIR:-$E2E_DIR/.run}"
PKI="$RUN_DIR/pki"
LOGS="$RUN_DIR/logs"
PIDS="$RUN_DIR/pids"
KUBECONFIG_OUT="$RUN_DIR/kubeconfig"
# Unique per `up`, so a cleanup never deletes a kind cluster someone else created.
KIND_CLUSTER_NAME="chipfit-e2e-$$"
# How long `up` waits for each component to report healthy; the whole start is measured < 60 s.
HEALTH_TIMEOUT_S="${CHIPFIT_E2E_HEALTH_TIMEOUT_S:-90}"
# A concurrent `up` may include a cold build of the control plane; a `down` takes seconds.
UP_LOCK_TIMEOUT_S=3600
DOWN_LOCK_TIMEOUT_S=30
# Service and pod address ranges exist only inside the API server's bookkeeping: nothing is routed.
SERVICE_CIDR="10.96.0.0/16"
POD_CIDR="10.244.0.0/16"
# Start order; `down` stops in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

PY="$REPO_DIR/.venv/bin/python"
[ -x "$PY" ] || PY=python3

log() { echo "cluster: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------------------------------------- state

mode() { # local | external | kind
  if [ -n "${CHIPFIT_E2E_KUBECONFIG:-}" ]; then
    echo external
  elif [ "${CHIPFIT_E2E_KIND:-auto}" = 1 ]; then
    echo kind
  elif [ "${CHIPFIT_E2E_KIND:-auto}" = auto ] && command -v kind >/dev/null && docker info >/dev/null 2>&1; then
    echo kind
  else
    echo local
  fi
}

pid_of() { [ -f "$PIDS/$1" ] && cat "$PIDS/$1"; }

# True when the recorded PID still runs the binary we started (guards against PID reuse).
alive() {
  local pid exe
  pid="$(pid_of "$1")" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  # /proc/PID/exe is the resolved path: compare with the resolved binary (e2e/.cache may be a symlink).
  [ "$exe" = "$(readlink -f "$BIN_DIR/$1")" ]
}

port() { cat "$RUN_DIR/ports/$1"; }

free_ports() { # N: print N currently free loopback TCP ports
  "$PY" - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

# ----------------------------------------------------------------------------------------------- pki

gen_pki() {
  mkdir -p "$PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=chipfit-e2e-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  # Service-account token signing key pair (apiserver verifies, controller-manager signs).
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  # The API server's serving certificate: loopback plus the in-cluster names of the kubernetes Service.
  cat >"$PKI/apiserver.ext" <<EOF
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EOF
  sign apiserver "/CN=kube-apiserver" "$PKI/apiserver.ext"
  printf 'extendedKeyUsage=clientAuth\n' >"$PKI/client.ext"
  # Client identities: admin in system:masters; the others get their RBAC bootstrap roles by name.
  sign admin "/O=system:masters/CN=chipfit-e2e-admin" "$PKI/client.ext"
  sign controller-manager "/CN=system:kube-controller-manager" "$PKI/client.ext"
  sign scheduler "/CN=system:kube-scheduler" "$PKI/client.ext"
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$PKI/client.ext"
  # Front-proxy (request-header) CA: the API server publishes it in kube-system/extension-apiserver-
  # authentication, which the controller-manager and scheduler read for delegated authentication.
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=chipfit-e2e-front-proxy-ca" \
    -keyout "$PKI/front-proxy-ca.key" -out "$PKI/front-proxy-ca.crt" 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=front-proxy-client" \
    -keyout "$PKI/front-proxy-client.key" -out "$PKI/front-proxy-client.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/front-proxy-client.csr" -CA "$PKI/front-proxy-ca.crt" \
    -CAkey "$PKI/front-proxy-ca.key" -CAcreateserial -days 30 -extfile "$PKI/client.ext" \
    -out "$PKI/front-proxy-client.crt" 2>/dev/null
}

sign() { # name subject extfile
  openssl req -new -newkey rsa:2048 -nodes -subj "$2" -keyout "$PKI/$1.key" -out "$PKI/$1.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 30 \
    -extfile "$3" -out "$PKI/$1.crt" 2>/dev/null
}

write_kubeconfig() { # path user
  local server
  server="https://127.0.0.1:$(port apiserver)"
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: chipfit-e2e
  cluster:
    server: $server
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: chipfit-e2e
  context: {cluster: chipfit-e2e, user: $2}
current-context: chipfit-e2e
EOF
}

# ------------------------------------------------------------------------------------------ processes

start() { # component args...: start detached in its own session, record its PID
  local name="$1"
  shift
  # setsid: the component survives the calling shell and owns its process group, so `down` can
  # stop it (and nothing else) by PID.
  # 9>&-: the component must not inherit the lock of `up`, or it would hold it for its lifetime.
  setsid "$BIN_DIR/$name" "$@" >"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$PIDS/$name"
  log "started $name (pid $!)"
}

wait_for() { # description command...: poll until the command succeeds or the timeout passes
  local what="$1" deadline=$(($(date +%s) + HEALTH_TIMEOUT_S))
  shift
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "$what not healthy after ${HEALTH_TIMEOUT_S} s"
      return 1
    fi
    sleep 0.5
  done
}

https_ok() { # port path: GET with the admin client certificate
  curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$1$2"
}

insecure_ok() { # port path: components serving self-signed certs; anonymous /healthz is allowed
  curl -fsSk --max-time 2 "https://127.0.0.1:$1$2"
}

kctl() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_OUT" "$@"; }

start_local_control_plane() {
  local p
  read -r -a p <<<"$(free_ports 6)"
  mkdir -p "$RUN_DIR/ports"
  echo "${p[0]}" >"$RUN_DIR/ports/etcd"
  echo "${p[1]}" >"$RUN_DIR/ports/etcd-peer"
  echo "${p[2]}" >"$RUN_DIR/ports/apiserver"
  echo "${p[3]}" >"$RUN_DIR/ports/controller-manager"
  echo "${p[4]}" >"$RUN_DIR/ports/scheduler"
  echo "${p[5]}" >"$RUN_DIR/ports/kwok"
  gen_pki
  write_kubeconfig "$KUBECONFIG_OUT" admin
  write_kubeconfig "$RUN_DIR/controller-manager.kubeconfig" controller-manager
  write_kubeconfig "$RUN_DIR/scheduler.kubeconfig" scheduler

  local etcd_url peer_url
  etcd_url="http://127.0.0.1:$(port etcd)"
  peer_url="http://127.0.0.1:$(port etcd-peer)"
  # --unsafe-no-fsync: test data is thrown away, and fsync on a shared disk is the slow part.
  start etcd --name chipfit-e2e --data-dir "$RUN_DIR/etcd" \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
    --initial-cluster "chipfit-e2e=$peer_url" --listen-metrics-urls "" \
    --unsafe-no-fsync --log-level warn
  wait_for etcd curl -fsS --max-time 2 "$etcd_url/health"

  start kube-apiserver --etcd-servers "$etcd_url" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$(port apiserver)" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --authorization-mode Node,RBAC --allow-privileged=true \
    --endpoint-reconciler-type none --profiling=false
  wait_for kube-apiserver https_ok "$(port apiserver)" /readyz

  start kube-controller-manager --kubeconfig "$RUN_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$RUN_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$RUN_DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$(port controller-manager)" \
    --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-cidr "$POD_CIDR" --service-cluster-ip-range "$SERVICE_CIDR" \
    --controllers '*' --profiling=false
  # GPU clusters bin-pack: score nodes by how full they get (MostAllocated) so small replicas fill the
  # nodes already in use and whole nodes stay free for wide tensor-parallel replicas, as the solver's
  # per-node packing assumes. (The default, LeastAllocated, spreads replicas and strands wide ones.)
  cat >"$RUN_DIR/scheduler-config.yaml" <<CONFIG
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $RUN_DIR/scheduler.kubeconfig
leaderElection:
  leaderElect: false
profiles:
  - schedulerName: default-scheduler
    pluginConfig:
      - name: NodeResourcesFit
        args:
          scoringStrategy:
            type: MostAllocated
            resources:
              - {name: cpu, weight: 1}
              - {name: memory, weight: 1}
              - {name: nvidia.com/gpu, weight: 10}
              - {name: amd.com/gpu, weight: 10}
              - {name: aws.amazon.com/neuroncore, weight: 10}
CONFIG
  start kube-scheduler --config "$RUN_DIR/scheduler-config.yaml" \
    --authentication-kubeconfig "$RUN_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$RUN_DIR/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$(port scheduler)" \
    --profiling=false
  start_kwok
  wait_for kube-controller-manager insecure_ok "$(port controller-manager)" /healthz
  wait_for kube-scheduler insecure_ok "$(port scheduler)" /healthz
}

start_kwok() {
  [ -f "$RUN_DIR/ports/kwok" ] || {
    mkdir -p "$RUN_DIR/ports"
    free_ports 1 >"$RUN_DIR/ports/kwok"
  }
  # kwok manages only nodes annotated kwok.x-k8s.io/node=fake (the fleet e2e/fleet.py writes),
  # heartbeats them through Leases, and plays pods bound to them to Running.
  start kwok --kubeconfig "$KUBECONFIG_OUT" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds 40 --cidr "$POD_CIDR" \
    --server-address "127.0.0.1:$(port kwok)"
  wait_for kwok curl -fsS --max-time 2 "http://127.0.0.1:$(port kwok)/healthz"
}

register_fleet() {
  local fleet="$RUN_DIR/fleet.yaml"
  "$PY" "$E2E_DIR/fleet.py" "${CHIPFIT_E2E_POOLS:-$REPO_DIR/examples}" >"$fleet"
  if [ -s "$fleet" ]; then
    kctl apply -f "$fleet" >/dev/null
    log "registered $(grep -c '^kind: Node$' "$fleet") fake GPU nodes from ${CHIPFIT_E2E_POOLS:-examples/}"
    # kwok's node-initialize stage marks them Ready; the scheduler only binds to Ready nodes.
    kctl wait --for=condition=Ready node -l kwok.x-k8s.io/fleet=chipfit --timeout="${HEALTH_TIMEOUT_S}s" >/dev/null
  else
    log "no AcceleratorPool in ${CHIPFIT_E2E_POOLS:-examples/}: no fake GPU nodes registered"
  fi
}

wait_default_serviceaccount() {
  # Pods are admitted only once the controller-manager created the namespace's default ServiceAccount.
  wait_for "default ServiceAccount" kctl get serviceaccount default -n default
}

# -------------------------------------------------------------------------------------------- verbs

cmd_up() {
  local m start_s
  m="$(mode)"
  start_s=$(date +%s)
  # Every recorded component still runs: a busy machine may only be slow to answer /readyz, so wait for
  # it rather than tear down a cluster that a test run is using.
  if [ -f "$RUN_DIR/mode" ] && all_alive && wait_for "the API server" kctl get --raw /readyz; then
    log "already up ($(cat "$RUN_DIR/mode")); kubeconfig: $KUBECONFIG_OUT"
    return 0
  fi
  if [ -d "$RUN_DIR" ]; then
    # Leftovers of a crashed run: stop what it recorded, start clean. Never start a second set over
    # processes that could not be stopped: their PIDs would be forgotten and they would outlive `down`.
    cmd_down >/dev/null 2>&1 || die "leftovers of an earlier run in $RUN_DIR could not be stopped (see $PIDS)"
  fi
  # Elsewhere only kwok runs here, against that cluster.
  if [ "$m" = local ]; then "$E2E_DIR/build.sh" >&2; else "$E2E_DIR/build.sh" kwok >&2; fi
  mkdir -p "$LOGS" "$PIDS"
  echo "$m" >"$RUN_DIR/mode"
  # From here on, any failure or interruption stops everything already started.
  # shellcheck disable=SC2154 # rc is assigned inside the trap
  trap 'rc=$?; if [ $rc -ne 0 ]; then log "up failed; logs:"; tail_logs; cmd_down >/dev/null 2>&1 || true; fi' EXIT
  trap 'exit 130' INT TERM HUP
  case "$m" in
    local) start_local_control_plane ;;
    external)
      cp "$CHIPFIT_E2E_KUBECONFIG" "$KUBECONFIG_OUT"
      wait_for "the cluster of CHIPFIT_E2E_KUBECONFIG" kctl get --raw /readyz
      start_kwok
      ;;
    kind)
      # Recorded first, so a failed or interrupted create is deleted by the cleanup too.
      echo "$KIND_CLUSTER_NAME" >"$RUN_DIR/kind-cluster"
      kind create cluster --name "$KIND_CLUSTER_NAME" --kubeconfig "$KUBECONFIG_OUT" --wait 120s >&2
      start_kwok
      ;;
  esac
  wait_default_serviceaccount
  register_fleet
  trap - EXIT
  log "up ($m) in $(($(date +%s) - start_s)) s; export KUBECONFIG=$KUBECONFIG_OUT"
  echo "$KUBECONFIG_OUT"
}

tail_logs() {
  local f
  for f in "$LOGS"/*.log; do
    [ -f "$f" ] || continue
    echo "----- $f (last 15 lines)" >&2
    tail -n 15 "$f" >&2
  done
}

stop_pid() { # component: TERM, then KILL after a grace period, only if it is still ours
  local name="$1" pid i
  alive "$name" || return 0
  pid="$(pid_of "$name")"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do # 50 x 0.2 s: components drain within seconds
    alive "$name" || break
    sleep 0.2
  done
  if alive "$name"; then
    log "$name (pid $pid) ignored SIGTERM; killing"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 25); do
      alive "$name" || break
      sleep 0.2
    done
  fi
  if alive "$name"; then
    log "error: $name (pid $pid) is still running"
    return 1
  fi
  log "stopped $name (pid $pid)"
}

cmd_down() {
  local i m
  [ -d "$RUN_DIR" ] || return 0
  m="$(cat "$RUN_DIR/mode" 2>/dev/null || echo local)"
  if [ "$m" != local ] && [ -f "$KUBECONFIG_OUT" ]; then
    # On a cluster we do not own, remove the fake nodes we registered (their pods go with them).
    kctl delete node -l kwok.x-k8s.io/fleet=chipfit --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  local left=0
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop_pid "${COMPONENTS[$i]}" || left=1; done
  if [ -f "$RUN_DIR/kind-cluster" ]; then kind delete cluster --name "$(cat "$RUN_DIR/kind-cluster")" >&2 || true; fi
  # Keep the logs of the last run for post-mortems; everything else goes (the PIDs only when all
  # stopped, so a second `down` can retry).
  [ "$left" -eq 0 ] || return 1
  rm -rf "$RUN_DIR/etcd" "$PKI" "$PIDS" "$RUN_DIR/ports" "$RUN_DIR/mode" "$RUN_DIR/kind-cluster" \
    "$KUBECONFIG_OUT" "$RUN_DIR"/*.kubeconfig "$RUN_DIR/fleet.yaml"
  return "$left"
}

all_alive() { # every component this mode runs here has a live recorded process
  local m c
  m="$(cat "$RUN_DIR/mode")"
  for c in "${COMPONENTS[@]}"; do
    [ "$m" = local ] || [ "$c" = kwok ] || continue
    alive "$c" || return 1
  done
}

cmd_status() {
  local m ok=0 c
  [ -f "$RUN_DIR/mode" ] || {
    echo "down"
    return 1
  }
  m="$(cat "$RUN_DIR/mode")"
  echo "mode: $m   kubeconfig: $KUBECONFIG_OUT"
  for c in "${COMPONENTS[@]}"; do
    [ "$m" = local ] || [ "$c" = kwok ] || continue
    if alive "$c"; then echo "$c: running (pid $(pid_of "$c"))"; else
      echo "$c: NOT running"
      ok=1
    fi
  done
  if kctl get --raw /readyz >/dev/null 2>&1; then echo "api: ready"; else
    echo "api: NOT ready"
    ok=1
  fi
  return "$ok"
}

lock() { # timeout-seconds
  # One `up` or `down` at a time per run folder (two shells of one work tree may race otherwise).
  mkdir -p "$RUN_DIR"
  exec 9>"$RUN_DIR/.lock"
  flock -w "$1" 9
}

case "${1:-}" in
  up)
    lock "$UP_LOCK_TIMEOUT_S" || die "another up/down holds $RUN_DIR/.lock"
    cmd_up
    ;;
  down)
    # Stopping must not hang: after a short wait, stop what is recorded even without the lock.
    lock "$DOWN_LOCK_TIMEOUT_S" || log "warning: $RUN_DIR/.lock still held; stopping anyway"
    cmd_down
    ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
