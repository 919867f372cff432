#!/usr/bin/env bash
# Builds helm (pinned) from the Go module proxy into the test-binary cache and prints its path.
set -euo pipefail
version="v3.22.0"
dir="${XDG_CACHE_HOME:-$HOME/.cache}/meshsigner/testbin/helm-$version-$(go env GOVERSION)"
if [ ! -x "$dir/helm" ]; then
  mkdir -p "$dir"
  echo "building helm $version into $dir (first time: a few minutes)" >&2
  GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOBIN="$dir" \
    go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$version" >&2
fi
echo "$dir/helm"
