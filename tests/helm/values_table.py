"""The chart README's values table, generated from values.yaml (its ``# --`` comments describe the keys).

``python -m tests.helm.values_table`` prints it; test_chart_docs.py keeps helm/meshsigner/README.md in step."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "meshsigner"
# Objects documented as one value (free-form Kubernetes fields or label maps), not key by key.
OPAQUE = {
    "resources", "nodeSelector", "affinity", "labels", "annotations", "policies", "podSecurityContext",
    "securityContext", "commonLabels", "deploymentLabels", "deploymentAnnotations", "podAnnotations", "podLabels",
}  # fmt: skip
BEGIN, END = "<!-- values table: python -m tests.helm.values_table -->", "<!-- end of values table -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):")


def leaves(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in OPAQUE:
            found.update(leaves(value, path + "."))
        else:
            found[path] = value
    return found


def descriptions(text: str) -> dict[str, str]:
    """``# -- text`` (and the ``#`` lines after it) above a key describes that key."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending:
                pending.append(stripped[1:].strip())
            continue
        match = _KEY.match(line)
        if not match or stripped.startswith("-"):
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        if pending:
            found[".".join(key for _, key in stack)] = " ".join(pending)
            pending = []
    return found


def table() -> str:
    text = (CHART / "values.yaml").read_text()
    notes = descriptions(text)
    rows = ["| Key | Default | Description |", "|---|---|---|"]
    values = leaves(yaml.safe_load(text))
    sections = {key for key in notes if key not in values}
    for key, value in values.items():
        for section in sorted(s for s in sections if key.startswith(s + ".")):
            rows.append(f"| `{section}` | | {notes[section]} |")
            sections.discard(section)
        default = json.dumps(value).replace("|", "\\|")
        rows.append(f"| `{key}` | `{default}` | {notes.get(key, '')} |")
    return "\n".join([BEGIN, *rows, END])


if __name__ == "__main__":
    print(table())
