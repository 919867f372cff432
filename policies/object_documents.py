"""Policy objects read from the Kubernetes API (``--policy-source kubernetes``) as the loader's documents.

An object's JSON is turned into the same node tree the YAML files give (``yaml_source.py``), so the one strict
schema and the one all-or-nothing compiler judge both sources alike. A node built here has no text position:
problems name the object and the field path (``IdentityPolicy payments/team-grants: spec.rules[0].identities[0]:
...``) instead of ``file:line:col``. Only the metadata the schema knows is kept (name, namespace, labels,
annotations); what the API server adds (uid, resourceVersion, generation, managedFields, status...) is dropped
from the document and kept in the document's ``ObjectRef``.

The set's revision is a digest of every object's identity and version: (kind, namespace, name, uid, generation) and
its labels and annotations. Not the resourceVersion itself: it also changes when only the status is written (the
leader writes it), and a revision that moved with every status write would look like a new set to every replica.
The generation moves with every spec change; labels and annotations are hashed because they do not move it.
Any change a policy author makes gives a new revision; the same objects give the same one on every replica.

The shadow set (``settings.shadowPolicySet: next``) is the IdentityPolicy objects labelled
``meshsigner.io/policy-set: next``; the enforced set is the IdentityPolicy objects without that label. Both come from
the same list+watch and are split here, so a labelled object never grants anything in the enforced set, whatever
its label's value. PolicySettings is a singleton (one object, named ``settings``): the shadow set decides with the
enforced settings minus ``shadowPolicySet`` (a label on the PolicySettings object has no effect, with a warning).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from policies.compiled import ObjectRef
from policies.loader import build_from_documents
from policies.policy_set import PolicySet
from policies.problems import PolicySetInvalid, Problem, Severity
from policies.yaml_source import SourceDocument

KEPT_METADATA = ("name", "namespace", "labels", "annotations")
# kubectl's copy of the whole object: large, and says nothing the spec does not
DROPPED_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})
# the API server's and controllers' parts of an object: not the policy author's to set, not in the schema
SERVER_FIELDS = frozenset({"status"})
OBJECTS_ORIGIN = "policy objects"  # where set-wide problems of the Kubernetes source are reported
POLICY_SET_LABEL = "meshsigner.io/policy-set"  # on an IdentityPolicy: it belongs to that shadow set, not the enforced

_NO_POSITION = yaml.Mark("", -1, -1, -1, None, 0)  # position() reads it as (0, 0): no text to point at
_TAGS = {
    bool: "tag:yaml.org,2002:bool",
    int: "tag:yaml.org,2002:int",
    float: "tag:yaml.org,2002:float",
    str: "tag:yaml.org,2002:str",
    type(None): "tag:yaml.org,2002:null",
}


def object_ref(obj: Mapping[str, Any]) -> ObjectRef:
    metadata = _mapping(obj.get("metadata"))
    generation = metadata.get("generation")
    return ObjectRef(
        kind=str(obj.get("kind") or "?"),
        namespace=str(metadata["namespace"]) if metadata.get("namespace") else None,
        name=str(metadata.get("name") or "?"),
        generation=generation if isinstance(generation, int) and not isinstance(generation, bool) else None,
        resource_version=str(metadata.get("resourceVersion") or ""),
        uid=str(metadata.get("uid") or ""),
    )


def object_document(obj: Mapping[str, Any]) -> SourceDocument:
    """The loader's document for one object (an IdentityPolicy or PolicySettings as the API returns it)."""
    ref = object_ref(obj)
    metadata = _mapping(obj.get("metadata"))
    kept: dict[str, Any] = {key: metadata[key] for key in KEPT_METADATA if key in metadata}
    annotations = kept.get("annotations")
    if isinstance(annotations, Mapping):
        kept["annotations"] = {k: v for k, v in annotations.items() if k not in DROPPED_ANNOTATIONS}
        if not kept["annotations"]:
            del kept["annotations"]
    document = {key: value for key, value in obj.items() if key not in SERVER_FIELDS}
    document["metadata"] = kept
    return SourceDocument(ref.label, 0, json_node(document), ref)


def json_node(value: Any) -> yaml.Node:
    """A YAML node tree for a JSON value: mappings, lists and the scalars JSON has, each with its YAML tag."""
    if isinstance(value, Mapping):
        pairs = [(json_node(str(key)), json_node(item)) for key, item in value.items()]
        return yaml.MappingNode("tag:yaml.org,2002:map", pairs, _NO_POSITION, _NO_POSITION)
    if isinstance(value, list | tuple):
        items = [json_node(item) for item in value]
        return yaml.SequenceNode("tag:yaml.org,2002:seq", items, _NO_POSITION, _NO_POSITION)
    tag = _TAGS.get(type(value))
    if tag is None:
        raise TypeError(f"not a JSON value: {type(value).__name__}")
    text = "null" if value is None else ("true" if value else "false") if isinstance(value, bool) else str(value)
    return yaml.ScalarNode(tag, text, _NO_POSITION, _NO_POSITION)


def objects_revision(objects: Sequence[Mapping[str, Any]]) -> str:
    """``sha256:<hex>`` over the sorted versions of every object (``object_version``)."""
    text = json.dumps(sorted(map(object_version, objects)), separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def object_version(obj: Mapping[str, Any]) -> list[str]:
    """(kind, namespace, name, uid, generation, labels and annotations): what changes when the author changes the
    object, and not when only its status is written. An object without a generation falls back to its
    resourceVersion (it then changes with status writes too: never missing a change)."""
    ref = object_ref(obj)
    metadata = _mapping(obj.get("metadata"))
    version = str(ref.generation) if ref.generation is not None else f"rv:{ref.resource_version}"
    annotations = {k: v for k, v in _mapping(metadata.get("annotations")).items() if k not in DROPPED_ANNOTATIONS}
    labelled = json.dumps([metadata.get("labels") or {}, annotations], sort_keys=True, default=str)
    return [ref.kind, ref.namespace or "", ref.name, ref.uid, version, labelled]


def policy_set_label(obj: Mapping[str, Any]) -> str | None:
    """The shadow set an object is labelled for (``POLICY_SET_LABEL``), or None (an object of the enforced set)."""
    labels = _mapping(_mapping(obj.get("metadata")).get("labels"))
    value = labels.get(POLICY_SET_LABEL)
    return None if value is None else str(value)


def enforced_objects(objects: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The enforced set's objects: PolicySettings, and every IdentityPolicy without the policy-set label."""
    return [obj for obj in objects if obj.get("kind") == "PolicySettings" or policy_set_label(obj) is None]


def shadow_objects(objects: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    """The IdentityPolicy objects labelled for the shadow set ``name``."""
    return [obj for obj in objects if obj.get("kind") != "PolicySettings" and policy_set_label(obj) == name]


def build_object_policy_set(
    objects: Sequence[Mapping[str, Any]], *, trust_domain: str | None, root_namespace: str
) -> PolicySet:
    """The enforced set from the policy objects (``enforced_objects``), all or nothing (raises PolicySetInvalid).

    IdentityPolicy objects outside ``root_namespace`` are confined to their own namespace (``compile_policy``).
    """
    enforced = enforced_objects(objects)
    warnings = [
        Problem(
            object_ref(obj).label,
            0,
            0,
            f"metadata.labels[{POLICY_SET_LABEL}]",
            "no effect on PolicySettings (a singleton): the shadow set uses these settings without shadowPolicySet",
            Severity.WARNING,
        )
        for obj in enforced
        if obj.get("kind") == "PolicySettings" and policy_set_label(obj) is not None
    ]
    return _build(enforced, warnings, trust_domain=trust_domain, root_namespace=root_namespace)


def build_object_shadow_set(
    objects: Sequence[Mapping[str, Any]], name: str, *, trust_domain: str | None, root_namespace: str
) -> PolicySet:
    """The shadow set ``name``: the IdentityPolicy objects labelled for it, decided with the enforced PolicySettings
    minus ``shadowPolicySet`` (a shadow set names no other). All or nothing (raises PolicySetInvalid)."""
    policies = shadow_objects(objects, name)
    if not policies:
        message = (
            f"settings.shadowPolicySet names {name!r}; no IdentityPolicy carries the label {POLICY_SET_LABEL}={name}"
        )
        raise PolicySetInvalid([Problem(OBJECTS_ORIGIN, 0, 0, "", message)])
    settings = []
    for obj in objects:
        if obj.get("kind") == "PolicySettings":
            spec = _mapping(obj.get("spec"))
            settings.append({**obj, "spec": {k: v for k, v in spec.items() if k != "shadowPolicySet"}})
    return _build([*settings, *policies], [], trust_domain=trust_domain, root_namespace=root_namespace)


def _build(
    objects: Sequence[Mapping[str, Any]], warnings: list[Problem], *, trust_domain: str | None, root_namespace: str
) -> PolicySet:
    problems: list[Problem] = []
    documents = []
    for obj in objects:
        try:
            documents.append(object_document(obj))
        except TypeError as exc:  # not from a JSON decoder: refuse the object rather than guess
            problems.append(Problem(object_ref(obj).label, 0, 0, "", f"cannot read the object: {exc}"))
    if not objects:
        problems.append(Problem(OBJECTS_ORIGIN, 0, 0, "", "no PolicySettings or IdentityPolicy objects found"))
    if problems:
        raise PolicySetInvalid(problems)
    return build_from_documents(
        documents,
        trust_domain=trust_domain,
        problems=warnings,
        root_namespace=root_namespace,
        origin=(OBJECTS_ORIGIN, 0),
        revision=objects_revision(objects),
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
