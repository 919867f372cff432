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
# The interpreter that has the project's dependencies: the caller's (MESHSIGNER_PYTHON, set by the test
# fixtures to sys.executable), else the repo's venv; never a bare python3 without the kubernetes client.
py="${MESHSIGNER_PYTHON:-$repo/.venv/bin/python}"
[[ -x "$py" ]] || { echo "up.sh: no Python with the project's dependencies at $py (run make venv)" >&2; exit 1; }
exec "$py" "$here/plane.py" up "$@"
