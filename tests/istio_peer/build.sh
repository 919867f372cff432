#!/usr/bin/env bash
# Builds Istio's own CA client (the conformance peer) into the test-binary cache and prints its path.
# The cache key covers the module files, main.go and the Go version, so a second run is a no-op.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/meshsigner/testbin"
key="$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)-$(go env GOVERSION)"
binary="$cache/istio-ca-peer-$key"
if [ ! -x "$binary" ]; then
  mkdir -p "$cache"
  echo "building Istio's CA client peer into $binary (first time: a few minutes)" >&2
  (cd "$here" && GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=readonly \
    go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$binary.tmp.$$" .)
  mv "$binary.tmp.$$" "$binary"
fi
echo "$binary"
