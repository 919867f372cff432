"""Fixtures of the fault scenarios: the cert-manager-mode signer of tests/kube/certmanager, workload identities
on the plane, and a plane put back together after each scenario whatever it did to the processes."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

from tests.kube.certmanager.conftest import approver, signer_factory  # noqa: F401  (fixtures shared with these tests)
from tests.support.csr_builder import make_csr


@pytest.fixture
def identities(make_namespace, make_service_account, mint_token) -> list[tuple[str, str]]:
    """Ten (csr, token) pairs of distinct service accounts in one namespace."""
    ns = make_namespace("faults")
    out = []
    for index in range(10):
        sa = make_service_account(ns, f"sa-{index}")
        out.append((make_csr([f"spiffe://cluster.local/ns/{ns}/sa/{sa}"]), mint_token(ns, sa)))
    return out


@pytest.fixture
def plane(kube_plane) -> Iterator:
    """The local plane with process control; running again (resumed, restarted) when the scenario ends."""
    if kube_plane.external:
        pytest.skip("external cluster: no process control")
    yield kube_plane
    api = kube_plane.procs["kube-apiserver"]
    if api.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(api.pid, signal.SIGCONT)
    kube_plane.start_apiserver()
    kube_plane.start_cm_controller()
