"""docs/architecture.md's module map names every module of the four packages, and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("signer", "policies", "bridge", "clocks", "proto")
GENERATED = {"proto/istio_ca_pb2.py", "proto/istio_ca_pb2_grpc.py"}


def modules_on_disk() -> set[str]:
    found = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            relative = path.relative_to(REPO).as_posix()
            if path.name != "__init__.py" and relative not in GENERATED:
                found.add(relative)
    return found


def modules_in_map() -> set[str]:
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_/]+\.py)` \|", section, flags=re.MULTILINE))


def test_the_module_map_lists_every_module() -> None:
    missing = modules_on_disk() - modules_in_map()
    assert not missing, f"add these to docs/architecture.md §Module map: {sorted(missing)}"


def test_the_module_map_names_no_module_that_is_gone() -> None:
    gone = modules_in_map() - modules_on_disk()
    assert not gone, f"docs/architecture.md §Module map names modules that no longer exist: {sorted(gone)}"
