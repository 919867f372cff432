#!/usr/bin/env bash
# Starts the test control plane (etcd, kube-apiserver, cert-manager controller) on 127.0.0.1, or reuses the
# running one, and returns when all are ready. Builds missing binaries first (build.sh, cached).
# Admin kubeconfig: .cluster/kubeconfig. Stop with tests/cluster/down.sh (make cluster-down).
# Extra arguments go to plane.py up (e.g. --for-tests). MESHSIGNER_CM_AUTO_APPROVE=1 runs cert-manager's
# CertificateRequest auto-approver too (off by default).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bash "$here/build.sh"
py="$repo/.venv/bin/python"
[[ -x "$py" ]] || py=python3
exec "$py" "$here/plane.py" up "$@"
