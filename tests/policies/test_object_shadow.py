"""The shadow set with the Kubernetes source: the IdentityPolicy objects labelled ``meshsigner.io/policy-set:
<name>``, split from the same objects as the enforced set, built all or nothing with their own last good set."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from policies.object_documents import POLICY_SET_LABEL, build_object_policy_set
from policies.policy_store import PolicyStore
from tests.policies.conftest import TD
from tests.policies.test_object_documents import (
    OWN,
    ROOT,
    conditions,
    decide,
    grant_own_identity,
    policy,
    settings_object,
)

FREEZE = [{"name": "freeze-orders", "effect": "Deny", "subjects": {"namespaces": ["orders"]}}]


def settings_naming(name: str | None, rv: str = "1") -> Any:
    obj = settings_object(rv)
    if name is not None:
        obj["spec"]["shadowPolicySet"] = name
    return obj


def labelled(obj: Any, name: str) -> Any:
    obj["metadata"].setdefault("labels", {})[POLICY_SET_LABEL] = name
    return obj


def shadow_policy(name: str, rules: list[dict[str, Any]], set_name: str = "next", rv: str = "30") -> Any:
    obj = policy(ROOT, name, rules, rv=rv)
    obj["metadata"]["uid"] = f"uid-{name}-{rv}"
    return labelled(obj, set_name)


def next_set(rv: str = "30") -> list[Any]:
    """Shadow set "next": own identities, except namespace orders is frozen."""
    return [
        shadow_policy("next-own", [{"name": "own", "effect": "Allow", "identities": [OWN]}], rv=rv),
        shadow_policy("next-freeze", FREEZE, rv=rv),
    ]


def test_labelled_objects_never_join_the_enforced_set() -> None:
    deny_all = shadow_policy("freeze", FREEZE, set_name="whatever")
    policy_set = build_object_policy_set(
        [settings_object(), grant_own_identity("5"), deny_all], trust_domain=TD, root_namespace=ROOT
    )
    assert [p.name for p in policy_set.policies] == ["own"]


def test_the_shadow_set_reports_its_difference_and_never_changes_the_answer() -> None:
    registry = CollectorRegistry()
    store = PolicyStore.for_objects(trust_domain=TD, root_namespace=ROOT, registry=registry)
    assert store.load_objects([settings_naming("next"), grant_own_identity("5"), *next_set()])
    assert store.shadow_set is not None and not [p for p in store.shadow_problems if p.severity.value == "error"]
    assert [p.name for p in store.shadow_set.policies] == ["next-freeze", "next-own"]
    assert store.shadow_set.settings.shadow_policy_set is None  # the enforced settings, minus the shadow's name
    assert store.shadow_set.settings.duration_max == 86400  # the enforced settings' 24h, not the 7d default
    decision = decide(store)
    assert decision.allowed  # the enforced decision stands
    shadow = decision.details["shadow"]
    assert shadow["policySet"] == "next" and shadow["difference"] == "WOULD_DENY"
    assert shadow["policySetRevision"] == store.shadow_set.revision != store.revision
    assert store.status()["shadow"]["ready"] is True


def test_a_broken_shadow_set_keeps_its_last_good_and_never_touches_the_enforced_one() -> None:
    store = PolicyStore.for_objects(trust_domain=TD, root_namespace=ROOT)
    assert store.load_objects([settings_naming("next"), grant_own_identity("5"), *next_set()])
    enforced, shadow_good = store.revision, store.shadow_set.revision  # type: ignore[union-attr]
    broken = shadow_policy("next-own", [{"name": "own", "effect": "Allow", "identities": ["x"]}], rv="31")
    edited = policy(ROOT, "own", [{"name": "own", "effect": "Allow", "identities": [OWN]}], rv="6", generation=2)
    objects = [settings_naming("next"), edited, broken, next_set()[1]]
    assert store.load_objects(objects)  # the enforced set moved on (its own object changed)
    assert store.revision != enforced
    assert store.shadow_set is not None and store.shadow_set.revision == shadow_good
    assert any(
        "IdentityPolicy istio-system/next-own: spec.rules[0].identities[0]" in str(p) for p in store.shadow_problems
    )
    assert not [p for p in store.last_problems if "next-own" in str(p)]  # not the enforced set's problems
    assert decide(store).details["shadow"]["difference"] == "WOULD_DENY"  # the last good shadow set still decides
    statuses = store.object_statuses()
    status, reason, message = conditions(statuses[("IdentityPolicy", ROOT, "next-own")])["Accepted"]
    assert (status, reason) == ("False", "Invalid") and message.startswith("in shadow set next: spec.rules[0]")
    status, reason, message = conditions(statuses[("IdentityPolicy", ROOT, "next-freeze")])["Ready"]
    assert (status, reason) == ("True", "InShadowSet") and f"shadow set next revision {shadow_good}" in message
    assert conditions(statuses[("IdentityPolicy", ROOT, "own")])["Ready"][:2] == ("True", "InForce")
    settings = statuses[("PolicySettings", "", "settings")]
    assert settings["activeRevision"] == store.revision and settings["shadowRevision"] == shadow_good


def test_a_shadow_set_without_labelled_objects_is_rejected_and_an_unnamed_one_is_not_built() -> None:
    store = PolicyStore.for_objects(trust_domain=TD, root_namespace=ROOT)
    spare = shadow_policy("later", FREEZE, set_name="later")
    assert store.load_objects([settings_naming("next"), grant_own_identity("5"), spare])
    assert store.ready and store.shadow_set is None
    assert "no IdentityPolicy carries the label meshsigner.io/policy-set=next" in str(store.shadow_problems[0])
    assert decide(store).allowed and "shadow" not in decide(store).details
    later = store.object_statuses()[("IdentityPolicy", ROOT, "later")]
    assert conditions(later)["Ready"][:2] == ("False", "NotInUse")
    assert conditions(later)["Accepted"][0] == "Unknown"


def test_removing_the_setting_drops_the_shadow_set() -> None:
    store = PolicyStore.for_objects(trust_domain=TD, root_namespace=ROOT)
    assert store.load_objects([settings_naming("next"), grant_own_identity("5"), *next_set()])
    assert store.shadow_set is not None
    assert store.load_objects([settings_naming(None, rv="2"), grant_own_identity("5"), *next_set()])
    assert store.shadow_set is None and "shadow" not in decide(store).details


def test_a_broken_enforced_set_never_blocks_the_shadow_set() -> None:
    store = PolicyStore.for_objects(trust_domain=TD, root_namespace=ROOT)
    assert store.load_objects([settings_naming("next"), grant_own_identity("5"), *next_set()])
    enforced, shadow_before = store.revision, store.shadow_set.revision  # type: ignore[union-attr]
    broken = policy(ROOT, "own", [{"name": "own", "effect": "Allow", "identities": ["x"]}], rv="6", generation=2)
    only_own = shadow_policy("next-own", [{"name": "own", "effect": "Allow", "identities": [OWN]}], rv="32")
    assert not store.load_objects([settings_naming("next"), broken, only_own])
    assert store.revision == enforced  # the last good enforced set keeps deciding
    assert store.shadow_set is not None and store.shadow_set.revision != shadow_before
    assert [p.name for p in store.shadow_set.policies] == ["next-own"]  # the freeze was removed from the shadow set
    assert decide(store).details["shadow"]["difference"] == "OTHER_RULE"  # both allow, through next-own now
