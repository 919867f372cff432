#!/usr/bin/env bash
# Builds the side-by-side benchmark's Go programs (Istio's CA server on its own, and the load client) into the
# test-binary cache and prints their two paths, server first. The cache key covers the module files, every .go
# file and the Go version, so a second run is a no-op. A lock keeps two concurrent first runs from racing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/meshsigner/testbin"
key="$(cd "$here" && cat go.mod go.sum $(find . -name '*.go' | LC_ALL=C sort) | sha256sum | cut -c1-12)-$(go env GOVERSION)"
mkdir -p "$cache"
exec 9>"$cache/.istiod-bench.lock"
flock 9
for program in ca-server load-client; do
  binary="$cache/istiod-bench-$program-$key"
  if [ ! -x "$binary" ]; then
    echo "building $program into $binary (first time: several minutes)" >&2
    (cd "$here" && GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=readonly \
      go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$binary.tmp.$$" "./$program")
    mv "$binary.tmp.$$" "$binary"
  fi
  echo "$binary"
done
