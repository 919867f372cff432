"""Every test under ``tests/kube/`` needs the real test control plane: it gets the ``cluster`` marker (and is skipped
with ``MESHSIGNER_SKIP_CLUSTER_TESTS=1``). The plane's fixtures are in ``tests/kube/plane_fixtures.py``, registered
for the whole session by ``tests/conftest.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.kube.plane_fixtures import SKIP_ENV

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    skip = os.environ.get(SKIP_ENV) == "1"
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.cluster)
        if skip:
            item.add_marker(pytest.mark.skip(reason=f"{SKIP_ENV}=1: test control plane disabled"))
