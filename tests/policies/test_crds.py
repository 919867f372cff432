"""The committed CRDs under crds/ are the generator's output, and their schemas accept exactly the fields,
types, enums and required flags the loader accepts (read from the YAML files, not from the generator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from policies import crd_gen
from policies.document_schemas import POLICY_SPEC, SETTINGS_SPEC
from policies.schema_readers import Bool, Duration, Int, List, Obj, Spec, Str, StrMap, Time

CRDS = Path(__file__).resolve().parents[2] / "crds"


def loader_shape(spec: Spec, path: str = "spec") -> dict[str, tuple[object, ...]]:
    """Every path the loader reads -> (type, enum, required field names, bounds)."""
    if isinstance(spec, Obj):
        required = tuple(sorted(name for name, field in spec.fields.items() if field.required))
        shape: dict[str, tuple[object, ...]] = {path: ("object", required)}
        for name, field in spec.fields.items():
            shape.update(loader_shape(field.spec, f"{path}.{name}"))
        return shape
    if isinstance(spec, List):
        shape = {path: ("array", spec.non_empty, spec.max_items)}
        shape.update(loader_shape(spec.item, f"{path}[]"))
        return shape
    if isinstance(spec, StrMap):
        return {path: ("map",), **loader_shape(spec.value, f"{path}{{}}")}
    if isinstance(spec, Str):
        return {path: ("string", tuple(spec.enum), spec.max_length)}
    if isinstance(spec, Int):
        return {path: ("integer", spec.minimum, spec.maximum)}
    if isinstance(spec, Bool):
        return {path: ("boolean",)}
    if isinstance(spec, Duration):
        return {path: ("duration",)}
    if isinstance(spec, Time):
        return {path: ("date-time",)}
    raise AssertionError(f"unexpected reader {spec!r} at {path}")


def crd_shape(schema: dict[str, Any], path: str = "spec") -> dict[str, tuple[object, ...]]:
    """The same view of an OpenAPI schema as committed."""
    kind = schema["type"]
    if kind == "object" and "additionalProperties" in schema:
        return {path: ("map",), **crd_shape(schema["additionalProperties"], f"{path}{{}}")}
    if kind == "object":
        shape: dict[str, tuple[object, ...]] = {path: ("object", tuple(sorted(schema.get("required", ()))))}
        for name, child in schema["properties"].items():
            shape.update(crd_shape(child, f"{path}.{name}"))
        return shape
    if kind == "array":
        shape = {path: ("array", schema.get("minItems") == 1, schema.get("maxItems"))}
        shape.update(crd_shape(schema["items"], f"{path}[]"))
        return shape
    if kind == "string" and schema.get("format") == "date-time":
        return {path: ("date-time",)}
    if kind == "string" and schema.get("pattern") == crd_gen.DURATION_PATTERN:
        return {path: ("duration",)}
    if kind == "string":
        return {path: ("string", tuple(schema.get("enum", ())), schema.get("maxLength"))}
    if kind == "integer":
        return {path: ("integer", schema.get("minimum"), schema.get("maximum"))}
    return {path: (kind,)}


def committed(name: str) -> dict[str, Any]:
    document = yaml.safe_load((CRDS / name).read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def version_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


def test_the_committed_crds_are_the_generators_output() -> None:
    expected = crd_gen.rendered()
    assert sorted(p.name for p in CRDS.glob("*.yaml")) == sorted(expected)
    for name, text in expected.items():
        assert (CRDS / name).read_text(encoding="utf-8") == text, f"crds/{name} is stale: python -m policies.crd_gen"
    assert crd_gen.main(["--check", str(CRDS)]) == 0


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    assert crd_gen.main([str(tmp_path)]) == 0
    assert crd_gen.main(["--check", str(tmp_path)]) == 0
    stale = tmp_path / "identitypolicies.meshsigner.io.yaml"
    stale.write_text(stale.read_text().replace("Enforce", "Enforced"))
    assert crd_gen.main(["--check", str(tmp_path)]) == 1


@pytest.mark.parametrize(
    ("file", "spec"),
    [("identitypolicies.meshsigner.io.yaml", POLICY_SPEC), ("policysettings.meshsigner.io.yaml", SETTINGS_SPEC)],
)
def test_every_loader_field_is_in_the_crd_and_vice_versa(file: str, spec: Obj) -> None:
    schema = version_schema(committed(file))["properties"]["spec"]
    from_crd, from_loader = crd_shape(schema), loader_shape(spec)
    assert sorted(from_crd) == sorted(from_loader)  # the same field paths, both ways
    assert from_crd == from_loader  # and the same types, enums, bounds and required fields
    assert "spec.rules[].when" in from_crd or file.startswith("policysettings")


def test_scope_names_and_columns() -> None:
    policy = committed("identitypolicies.meshsigner.io.yaml")
    settings = committed("policysettings.meshsigner.io.yaml")
    assert (policy["spec"]["scope"], settings["spec"]["scope"]) == ("Namespaced", "Cluster")
    columns = [c["name"] for c in policy["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Mode", "Rules", "Ready", "Age"]
    rules = version_schema(policy)["properties"]["spec"]["properties"]["rules"]
    assert rules["x-kubernetes-list-map-keys"] == ["name"]  # the API server refuses duplicate rule names
    singleton = version_schema(settings)["x-kubernetes-validations"][0]["rule"]
    assert singleton == "self.metadata.name == 'settings'"
