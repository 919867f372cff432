#!/usr/bin/env bash
# Builds Istio's real control plane (pilot-discovery, i.e. istiod) and node agent (pilot-agent) from the
# istio.io/istio module pinned in go.mod, plus the small xDS probe (xdsprobe/, the application half of a
# proxyless gRPC workload), into the test-binary cache; prints the three paths, one a line, in that order.
# Cache keys cover each wrapper module's files and the Go version, so a second run is a no-op; concurrent
# callers wait on a lock instead of building twice. Build times go to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/meshsigner/testbin"
gover="$(go env GOVERSION)"
istio_key="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)-$gover"
probe_key="$(cat "$here/xdsprobe/go.mod" "$here/xdsprobe/go.sum" "$here/xdsprobe/main.go" | sha256sum | cut -c1-12)-$gover"
mkdir -p "$cache"
exec 9>"$cache/istio-$istio_key.lock"
flock 9

# build WRAPPER_DIR PACKAGE OUTPUT
build() {
  local wrapper="$1" package="$2" binary="$3" started=$SECONDS
  [ -x "$binary" ] && return 0
  echo "building $package into $binary (first time: several minutes)" >&2
  (cd "$wrapper" && GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=readonly \
    go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$binary.tmp.$$" "$package")
  mv "$binary.tmp.$$" "$binary"
  echo "built $package in $((SECONDS - started))s" >&2
}

build "$here" istio.io/istio/pilot/cmd/pilot-discovery "$cache/pilot-discovery-$istio_key"
build "$here" istio.io/istio/pilot/cmd/pilot-agent "$cache/pilot-agent-$istio_key"
build "$here/xdsprobe" example.invalid/meshsigner/istioxdsprobe "$cache/istio-xdsprobe-$probe_key"
echo "$cache/pilot-discovery-$istio_key"
echo "$cache/pilot-agent-$istio_key"
echo "$cache/istio-xdsprobe-$probe_key"
