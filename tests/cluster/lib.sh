# Shared helpers for build.sh and up.sh (sourced, not executed).
# Computes where the test-control-plane binaries live in the cache:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/meshsigner/testbin/<name>-<version>-<go version>-<hash>/<name>
# <hash> covers the wrapper module (go.mod, go.sum, own sources), versions.env and BUILD_REV, so any change
# to what is built gives a new folder, and an unchanged one is reused by every checkout on the machine.

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$CLUSTER_DIR/versions.env"
# Bump when the build flags below change.
BUILD_REV=1
TESTBIN_ROOT="${MESHSIGNER_TESTBIN:-${XDG_CACHE_HOME:-$HOME/.cache}/meshsigner/testbin}"

export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0
# A non-login shell (CI, make) may lack the toolchain's usual PATH entry.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  export PATH="/usr/local/go/bin:$PATH"
fi

go_version() {
  command -v go >/dev/null 2>&1 || { echo "no-go"; return; }
  go env GOVERSION
}

# wrapper_hash DIR: hash of the wrapper module's inputs.
wrapper_hash() {
  local dir="$1"
  {
    echo "rev=$BUILD_REV"
    cat "$CLUSTER_DIR/versions.env"
    (cd "$dir" && find . -maxdepth 1 -type f \( -name 'go.mod' -o -name 'go.sum' -o -name '*.go' \) | LC_ALL=C sort | xargs cat)
  } | sha256sum | cut -c1-12
}

# bin_dir NAME VERSION WRAPPER_DIR
bin_dir() {
  echo "$TESTBIN_ROOT/$1-$2-$GOVER-$(wrapper_hash "$3")"
}

GOVER="$(go_version)"
ETCD_DIR="$(bin_dir etcd "$ETCD_VERSION" "$CLUSTER_DIR/etcd")"
KUBE_DIR="$(bin_dir kube-apiserver "$KUBE_VERSION" "$CLUSTER_DIR/kube")"
CM_DIR="$(bin_dir cm-controller "$CERT_MANAGER_VERSION" "$CLUSTER_DIR/certmanager")"
ETCD_BIN="$ETCD_DIR/etcd"
KUBE_APISERVER_BIN="$KUBE_DIR/kube-apiserver"
CM_CONTROLLER_BIN="$CM_DIR/cm-controller"
CM_CRDS_DIR="$CM_DIR/crds"
