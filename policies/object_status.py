"""The status each policy object should show (``--policy-source kubernetes``), from the store's last build.

Pure data for the leader's status writer (bridge/policy_status.py): per object, ``Accepted`` (its own errors, with
field path and message, or none) and ``Ready`` (whether this generation is the one in force), each with
``observedGeneration``; IdentityPolicy objects also get ``ruleCount``, and PolicySettings the active revision.
The writer adds ``lastTransitionTime`` and writes only what changed.

The objects of the shadow set (labelled ``meshsigner.io/policy-set: <name>``) get the same conditions about the
shadow set's own build: ``Ready`` says ``InShadowSet`` (decided on every request, without effect) and every message
names the set; PolicySettings shows the shadow set's revision as ``shadowRevision``. An object labelled for a set
the settings do not name is built into no set: ``Accepted=Unknown``, ``Ready=False`` (``NotInUse``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from policies.compiled import ObjectRef
from policies.object_documents import (
    POLICY_SET_LABEL,
    enforced_objects,
    object_ref,
    policy_set_label,
    shadow_objects,
)
from policies.policy_set import PolicySet
from policies.problems import Problem, Severity

ObjectKey = tuple[str, str, str]  # kind, namespace ("" when cluster-scoped), name
MAX_MESSAGE = 4000  # a condition message, however many problems the object has
SHOWN_SET_ERRORS = 3  # of the set's errors, in the Ready message of the objects that had none


def object_key(ref: ObjectRef) -> ObjectKey:
    return ref.kind, ref.namespace or "", ref.name


ShadowBuild = tuple[str, Sequence[Problem], PolicySet | None]  # the shadow set's name, last problems, set in force


def object_statuses_of_sets(
    objects: Sequence[Mapping[str, Any]],
    problems: Sequence[Problem],
    active: PolicySet | None,
    shadow: ShadowBuild | None,
) -> dict[ObjectKey, dict[str, Any]]:
    """Every object's status: the enforced set's objects (``object_statuses``), the shadow set's (its own build),
    and the objects labelled for a set no setting names (built into none)."""
    statuses = object_statuses(enforced_objects(objects), problems, active)
    if shadow is not None:
        name, shadow_problems, shadow_set = shadow
        statuses.update(object_statuses(shadow_objects(objects, name), shadow_problems, shadow_set, shadow_set=name))
        settings = [status for (kind, _, _), status in statuses.items() if kind == "PolicySettings"]
        for status in settings:
            if shadow_set is not None:
                status["shadowRevision"] = shadow_set.revision
    in_use = shadow[0] if shadow is not None else None
    for obj in objects:
        label = policy_set_label(obj)
        if obj.get("kind") == "PolicySettings" or label is None or label == in_use:
            continue
        ref = object_ref(obj)
        message = f"labelled {POLICY_SET_LABEL}={label}, a set settings.shadowPolicySet does not name: not built"
        statuses[object_key(ref)] = {
            "observedGeneration": ref.generation,
            "conditions": [
                {**_condition("Accepted", False, "NotBuilt", message, ref), "status": "Unknown"},
                _condition("Ready", False, "NotInUse", message, ref),
            ],
        }
    return statuses


def object_statuses(
    objects: Sequence[Mapping[str, Any]],
    problems: Sequence[Problem],
    active: PolicySet | None,
    *,
    shadow_set: str | None = None,
) -> dict[ObjectKey, dict[str, Any]]:
    """The status of each of ``objects`` (the last build's input), given that build's ``problems`` and the set in
    force now (``active``: the build's own set when it was installed, the last good one when it was not).
    ``shadow_set``: the objects are that shadow set's (decided without effect), and the messages say so."""
    in_force = {
        object_key(ref): (ref.uid, ref.generation) for ref in (active.objects.values() if active is not None else ())
    }
    errors = [p for p in problems if p.severity is Severity.ERROR]
    revision = active.revision if active is not None else None
    what = f"shadow set {shadow_set} " if shadow_set is not None else ""
    kept = (
        f"{what}revision {revision} keeps deciding"
        if revision is not None
        else f"no {what or 'policy set '}is in force"
    )
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
        lines = _lines(own_errors or warnings)
        if shadow_set is not None:  # the message says which set judged it
            lines = f"in shadow set {shadow_set}" + (f": {lines}" if lines else "")
        accepted = _condition("Accepted", not own_errors, "Invalid" if own_errors else "Valid", lines, ref)
        if in_force.get(key) == (ref.uid, ref.generation):
            if shadow_set is None:
                ready = _condition("Ready", True, "InForce", f"in force in revision {revision}", ref)
            else:
                message = f"in shadow set {shadow_set} revision {revision}: decided on every request, without effect"
                ready = _condition("Ready", True, "InShadowSet", message, ref)
        elif own_errors:
            ready = _condition("Ready", False, "Invalid", f"its errors keep this generation out; {kept}", ref)
        else:
            reason = "SetRejected" if errors else "Pending"
            message = f"the {what or 'policy set '}was rejected: {set_errors}; {kept}" if errors else "not built yet"
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
