#!/usr/bin/env bash
# Builds the test control plane's binaries from pinned Go modules into a cache outside the checkout
# (see lib.sh for the layout). Idempotent: a binary whose cache folder exists is not rebuilt, so a warm
# run is a fast no-op. Concurrent runs (several checkouts, several engineers) serialise on a lock.
#
#   bash tests/cluster/build.sh          build what is missing, print progress
#   bash tests/cluster/build.sh --env    print the binary paths as NAME=VALUE lines, build nothing
#
# Env: MESHSIGNER_TESTBIN overrides the cache root; GOFLAGS from the caller is ignored.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

print_env() {
  cat <<ENV
KUBE_VERSION=$KUBE_VERSION
ETCD_VERSION=$ETCD_VERSION
CERT_MANAGER_VERSION=$CERT_MANAGER_VERSION
GO_VERSION=$GOVER
ETCD_BIN=$ETCD_BIN
KUBE_APISERVER_BIN=$KUBE_APISERVER_BIN
CM_CONTROLLER_BIN=$CM_CONTROLLER_BIN
CM_CRDS_DIR=$CM_CRDS_DIR
ENV
}

if [[ "${1:-}" == "--env" ]]; then
  print_env
  exit 0
fi

log() { printf '[build.sh %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [[ "$GOVER" == "no-go" ]]; then
  log "ERROR: no 'go' on PATH; the test control plane is built from Go modules (Go >= 1.26 needed)"
  exit 1
fi
case "$GOVER" in
  go1.2[6-9]*|go1.[3-9]*) ;;
  *) log "ERROR: $GOVER is too old: cert-manager $CERT_MANAGER_VERSION and kube-apiserver $KUBE_VERSION need go >= 1.26 (GOTOOLCHAIN=local: no toolchain download)"; exit 1 ;;
esac

all_cached() { [[ -x "$ETCD_BIN" && -x "$KUBE_APISERVER_BIN" && -x "$CM_CONTROLLER_BIN" && -d "$CM_CRDS_DIR" ]]; }

if all_cached; then
  log "cached: etcd $ETCD_VERSION, kube-apiserver $KUBE_VERSION, cm-controller (cert-manager $CERT_MANAGER_VERSION), $GOVER in $TESTBIN_ROOT"
  exit 0
fi

mkdir -p "$TESTBIN_ROOT"
exec 9>"$TESTBIN_ROOT/.build.lock"
if ! flock -n 9; then
  log "another build.sh holds $TESTBIN_ROOT/.build.lock; waiting for it"
  flock 9
fi
# Leftovers of interrupted builds (we hold the lock, so nobody else is building).
rm -rf "$TESTBIN_ROOT"/*.tmp.*

# go_build NAME DEST_DIR WRAPPER_DIR LDFLAGS PACKAGE [POST_HOOK]
go_build() {
  local name="$1" dest="$2" wrapper="$3" ldflags="$4" pkg="$5" post="${6:-}"
  if [[ -x "$dest/$name" ]]; then
    log "cached: $dest/$name"
    return 0
  fi
  local tmp="$dest.tmp.$$" start=$SECONDS pid rc
  rm -rf "$tmp"; mkdir -p "$tmp"
  log "building $name ($pkg) -> $dest"
  (
    cd "$wrapper"
    GOFLAGS=-mod=readonly exec go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$tmp/$name" "$pkg"
  ) >"$tmp/build.log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && log "  ... still building $name ($(( SECONDS - start ))s)"
  done
  rc=0; wait "$pid" || rc=$?
  if (( rc != 0 )); then
    log "ERROR: building $name failed (exit $rc); log follows"
    tail -n 60 "$tmp/build.log"
    rm -rf "$tmp"
    return 1
  fi
  if [[ -n "$post" ]]; then "$post" "$tmp" "$wrapper"; fi
  rm -rf "$dest"; mv "$tmp" "$dest"
  log "built $name in $(( SECONDS - start ))s"
}

copy_crds() {
  local out="$1" wrapper="$2" moddir
  moddir="$(cd "$wrapper" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)"
  mkdir -p "$out/crds"
  cp "$moddir"/deploy/crds/*.yaml "$out/crds/"
  chmod 644 "$out"/crds/*.yaml
  log "  copied $(ls "$out/crds" | wc -l) CRDs from $moddir/deploy/crds"
}

total=$SECONDS
log "cold build of missing binaries ($GOVER, $(nproc) cores); kube-apiserver takes long the first time"

kube_minor="${KUBE_VERSION#v1.}"; kube_minor="${kube_minor%%.*}"
kube_ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ld="$kube_ld -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$kube_minor -X $p.gitTreeState=clean"
done

go_build etcd "$ETCD_DIR" "$CLUSTER_DIR/etcd" "-s -w" go.etcd.io/etcd/server/v3
go_build cm-controller "$CM_DIR" "$CLUSTER_DIR/certmanager" \
  "-s -w -X github.com/cert-manager/cert-manager/pkg/util.AppVersion=$CERT_MANAGER_VERSION" . copy_crds
go_build kube-apiserver "$KUBE_DIR" "$CLUSTER_DIR/kube" "$kube_ld" k8s.io/kubernetes/cmd/kube-apiserver

"$KUBE_APISERVER_BIN" --version | sed 's/^/[build.sh] /'
"$ETCD_BIN" --version | head -1 | sed 's/^/[build.sh] /'
log "done in $(( SECONDS - total ))s"
