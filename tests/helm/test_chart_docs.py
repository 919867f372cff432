"""The chart's README values table is the one values.yaml generates (keys, defaults and descriptions), and the
values schema covers exactly the keys values.yaml sets."""

from __future__ import annotations

import json

import yaml

from tests.helm.values_table import BEGIN, CHART, END, leaves, table


def test_the_readme_values_table_matches_values_yaml():
    readme = (CHART / "README.md").read_text()
    assert BEGIN in readme and END in readme
    current = readme[readme.index(BEGIN) : readme.index(END) + len(END)]
    assert current == table(), "regenerate it: python -m tests.helm.values_table (and paste into the README)"


def _schema_leaves(schema: dict, prefix: str = "") -> set[str]:
    found = set()
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            found |= _schema_leaves(sub, f"{prefix}{key}.")
        else:
            found.add(f"{prefix}{key}")
    return found


def test_the_schema_describes_every_value_and_nothing_else():
    values = leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _schema_leaves(schema) - {"global"} == set(values)
