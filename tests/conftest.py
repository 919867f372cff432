"""Session fixtures shared across test folders: tools built from the Go module proxy into the test-binary cache
(``make test`` builds them before pytest runs, so here they are normally a cache hit)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# the test control plane's fixtures, defined once for the session (tests/kube and tests/istio both use them)
pytest_plugins = ["tests.kube.plane_fixtures"]


def _built(script: Path, what: str) -> str:
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"building {what} failed:\n{result.stderr}"
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def helm() -> str:
    return _built(TESTS / "helm" / "build-helm.sh", "helm")


@pytest.fixture(scope="session")
def istio_peer() -> str:
    return _built(TESTS / "istio_peer" / "build.sh", "Istio's CA client")
