"""The status each policy object should show (``--policy-source kubernetes``), from the store's last build.

Pure data for the leader's status writer (bridge/policy_status.py): per object, ``Accepted`` (its own errors, with
field path and message, or none) and ``Ready`` (whether this generation is the one in force), each with
``observedGeneration``; IdentityPolicy objects also get ``ruleCount``, and PolicySettings the active revision.
The writer adds ``lastTransitionTime`` and writes only what changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from policies.compiled import ObjectRef
from policies.object_documents import object_ref
from policies.policy_set import PolicySet
from policies.problems import Problem, Severity

ObjectKey = tuple[str, str, str]  # kind, namespace ("" when cluster-scoped), name
MAX_MESSAGE = 4000  # a condition message, however many problems the object has
SHOWN_SET_ERRORS = 3  # of the set's errors, in the Ready message of the objects that had none


def object_key(ref: ObjectRef) -> ObjectKey:
    return ref.kind, ref.namespace or "", ref.name


def object_statuses(
    objects: Sequence[Mapping[str, Any]], problems: Sequence[Problem], active: PolicySet | None
) -> dict[ObjectKey, dict[str, Any]]:
    """The status of each of ``objects`` (the last build's input), given that build's ``problems`` and the set in
    force now (``active``: the build's own set when it was installed, the last good one when it was not)."""
    in_force = {
        object_key(ref): (ref.uid, ref.generation) for ref in (active.objects.values() if active is not None else ())
    }
    errors = [p for p in problems if p.severity is Severity.ERROR]
    revision = active.revision if active is not None else None
    kept = f"revision {revision} keeps deciding" if revision is not None else "no policy set is in force"
    set_errors = "; ".join(str(p) for p in errors[:SHOWN_SET_ERRORS]) + (
        " ..." if len(errors) > SHOWN_SET_ERRORS else ""
    )
    by_object: dict[str, list[Problem]] = {}
    for problem in problems:  # grouped once: a large rejected set has many objects and many problems
        by_object.setdefault(problem.file, []).append(problem)
    statuses = {}
    for obj in objects:
        ref = object_ref(obj)
        key = object_key(ref)
        own = by_object.get(ref.label, [])
        own_errors = [p for p in own if p.severity is Severity.ERROR]
        warnings = [p for p in own if p.severity is Severity.WARNING]
        if own_errors:
            accepted = _condition("Accepted", False, "Invalid", _lines(own_errors), ref)
        else:
            accepted = _condition("Accepted", True, "Valid", _lines(warnings), ref)
        if in_force.get(key) == (ref.uid, ref.generation):
            ready = _condition("Ready", True, "InForce", f"in force in revision {revision}", ref)
        elif own_errors:
            ready = _condition("Ready", False, "Invalid", f"its errors keep this generation out; {kept}", ref)
        else:
            reason = "SetRejected" if errors else "Pending"
            message = f"the policy set was rejected: {set_errors}; {kept}" if errors else "not built yet"
            ready = _condition("Ready", False, reason, message, ref)
        status: dict[str, Any] = {"observedGeneration": ref.generation, "conditions": [accepted, ready]}
        if ref.kind == "IdentityPolicy":
            spec = obj.get("spec")
            rules = spec.get("rules") if isinstance(spec, Mapping) else None
            status["ruleCount"] = len(rules) if isinstance(rules, list) else 0
        elif ref.kind == "PolicySettings" and revision is not None:
            status["activeRevision"] = revision
        statuses[key] = status
    return statuses


def _condition(kind: str, ok: bool, reason: str, message: str, ref: ObjectRef) -> dict[str, Any]:
    condition: dict[str, Any] = {"type": kind, "status": "True" if ok else "False", "reason": reason}
    if ref.generation is not None:
        condition["observedGeneration"] = ref.generation
    condition["message"] = message[:MAX_MESSAGE]
    return condition


def _lines(problems: Sequence[Problem]) -> str:
    """``field.path: message`` per problem (the object is the one the status is on)."""
    return "; ".join(
        (f"{p.path}: " if p.path else "") + ("warning: " if p.severity is Severity.WARNING else "") + p.message
        for p in problems
    )
