#!/usr/bin/env bash
# Regenerates tests/cluster/kube/go.mod + go.sum for the pinned k8s.io/kubernetes version.
# k8s.io/kubernetes requires its staging modules at v0.0.0 and maps them to ./staging with `replace`
# lines that do not apply to consumers; this derives one `replace k8s.io/X => k8s.io/X v0.N.P` line per
# staging module from the go.mod the module proxy serves, so no list is typed by hand.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=
K8S="$KUBE_VERSION"
STG="v0.${K8S#v1.}"
cd "$here/kube"
rm -f go.mod go.sum
# outside any module: download k8s.io/kubernetes and locate its go.mod in the module cache
MOD=$(cd / && go mod download -json "k8s.io/kubernetes@$K8S" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
{
  echo "module example.invalid/meshsigner/testbin/kube"
  echo
  grep -E '^go [0-9]' "$MOD"
  grep -E '^godebug ' "$MOD" || true
  echo
  echo "replace ("
  sed -n "s|^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*|\t\1 => \1 $STG|p" "$MOD"
  echo ")"
} > go.mod
n=$(grep -c ' => k8s.io/' go.mod)
echo "gen-kube-gomod: $n staging replace lines for $K8S ($STG)"
GOFLAGS=-mod=mod go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$K8S"
echo "gen-kube-gomod: wrote $(pwd)/go.mod and go.sum"
