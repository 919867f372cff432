"""Kubernetes policy objects as the loader's documents (``--policy-source kubernetes``): the same schema and
compiler as the YAML files, problems that name the object and field path, and a revision from resourceVersions."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies.evaluator import evaluate
from policies.loader import load_policy_set
from policies.object_documents import build_object_policy_set, object_document, objects_revision
from policies.policy_set import SETTINGS_KEY
from policies.policy_store import PolicyStore
from policies.problems import PolicySetInvalid
from tests.policies.conftest import CA_NOT_AFTER, NOW, TD, caller, own_id, request

FIXTURES = Path(__file__).parent / "fixtures" / "policies"
ROOT = "istio-system"
OWN = "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"


def as_object(document: dict[str, Any], *, namespace: str | None, resource_version: str, generation: int = 1) -> Any:
    """What the API server returns for an applied document: server metadata added, a status, kubectl's copy."""
    obj = copy.deepcopy(document)
    metadata = obj["metadata"]
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata.update(
        uid="0d6c1d9e-0000-4000-8000-000000000001",
        resourceVersion=resource_version,
        generation=generation,
        creationTimestamp="2026-06-01T00:00:00Z",
        managedFields=[{"manager": "kubectl", "operation": "Apply"}],
    )
    metadata.setdefault("annotations", {})["kubectl.kubernetes.io/last-applied-configuration"] = "{...}"
    obj["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    return obj


def reference_objects() -> list[Any]:
    """The §2.1 reference set as objects: the settings cluster-scoped, the policies in the root namespace."""
    objects = []
    for index, path in enumerate(sorted(FIXTURES.glob("*.yaml"))):
        document = yaml.safe_load(path.read_text())
        namespace = None if document["kind"] == "PolicySettings" else ROOT
        objects.append(as_object(document, namespace=namespace, resource_version=str(100 + index)))
    return objects


def policy(namespace: str, name: str, rules: list[dict[str, Any]], rv: str = "7", generation: int = 1) -> Any:
    document = {
        "apiVersion": "meshsigner.io/v1alpha1",
        "kind": "IdentityPolicy",
        "metadata": {"name": name},
        "spec": {"rules": rules},
    }
    return as_object(document, namespace=namespace, resource_version=rv, generation=generation)


def settings_object(rv: str = "1") -> Any:
    document = {
        "apiVersion": "meshsigner.io/v1alpha1",
        "kind": "PolicySettings",
        "metadata": {"name": "settings"},
        "spec": {"trustDomain": TD, "duration": {"default": "1h", "max": "24h"}},
    }
    return as_object(document, namespace=None, resource_version=rv)


def build(*objects: Any) -> Any:
    return build_object_policy_set(list(objects), trust_domain=TD, root_namespace=ROOT)


def test_the_reference_set_compiles_from_objects_as_it_does_from_its_files() -> None:
    from_files = load_policy_set([FIXTURES], trust_domain=TD, root_namespace=ROOT)
    from_objects = build(*reference_objects())
    assert [p.name for p in from_objects.policies] == [p.name for p in from_files.policies]
    assert [[r.name for r in p.rules] for p in from_objects.policies] == [
        [r.name for r in p.rules] for p in from_files.policies
    ]
    assert from_objects.settings.duration_max == from_files.settings.duration_max
    # the server's metadata and kubectl's copy do not reach the compiled policy
    baseline = from_objects.policy_named("mesh-baseline")
    assert baseline is not None
    assert baseline.annotations == from_files.policy_named("mesh-baseline").annotations  # type: ignore[union-attr]
    assert baseline.source == "IdentityPolicy istio-system/mesh-baseline"


def test_the_document_keeps_only_what_the_schema_knows() -> None:
    obj = policy("payments", "grants", [{"name": "own", "effect": "Allow", "identities": [OWN]}])
    document = object_document(obj)
    assert document.where == "IdentityPolicy payments/grants"
    assert document.ref is not None and (document.ref.generation, document.ref.resource_version) == (1, "7")
    rebuilt = yaml.safe_load(yaml.serialize(document.node))
    assert rebuilt == {
        "apiVersion": "meshsigner.io/v1alpha1",
        "kind": "IdentityPolicy",
        "metadata": {"name": "grants", "namespace": "payments"},
        "spec": {"rules": [{"name": "own", "effect": "Allow", "identities": [OWN]}]},
    }


def test_a_problem_names_the_object_and_the_field_path() -> None:
    bad = policy("istio-system", "broken", [{"name": "r", "effect": "Allow", "identities": ["spiffe://{nope}/x"]}])
    with pytest.raises(PolicySetInvalid) as caught:
        build(settings_object(), bad)
    [error] = caught.value.errors
    assert str(error).startswith("IdentityPolicy istio-system/broken: spec.rules[0].identities[0]: ")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s["rules"][0].update(priority=1.5), "spec.rules[0].priority: unknown field 'priority'"),
        (lambda s: s.update(priority=1.5), "spec.priority: must be an integer, got a number"),
        (lambda s: s.update(priority="1"), "spec.priority: must be an integer, got a string"),
        (lambda s: s.update(mode=None), "spec.mode: must be a string, got null"),
        (lambda s: s["rules"][0].update(allowWildcardDNSNames="true"), "must be true or false, got a string"),
    ],
)
def test_json_types_are_checked_as_strictly_as_yaml(change: Any, expected: str) -> None:
    obj = policy("istio-system", "typed", [{"name": "r", "effect": "Allow", "identities": [OWN]}])
    change(obj["spec"])
    with pytest.raises(PolicySetInvalid) as caught:
        build(settings_object(), obj)
    assert any(expected in str(e) for e in caught.value.errors), [str(e) for e in caught.value.errors]


def test_a_namespaced_object_is_confined_to_its_namespace() -> None:
    grant = policy(
        "payments",
        "grants",
        [{"name": "dns", "effect": "Allow", "identities": [OWN], "dnsNames": ["{serviceAccount}.{namespace}.svc"]}],
    )
    policy_set = build(settings_object(), grant)
    assert [p.name for p in policy_set.policies] == ["payments:grants"]

    def allowed(namespace: str) -> bool:
        decision = evaluate(
            policy_set,
            caller(namespace, "api"),
            request(own_id(namespace, "api"), dns=(f"api.{namespace}.svc",)),
            now=NOW,
            ca_not_after=CA_NOT_AFTER,
        )
        return decision.allowed

    assert allowed("payments")
    assert not allowed("orders")


def test_the_set_names_the_object_of_each_policy_and_of_the_settings() -> None:
    policy_set = build(settings_object("3"), policy("payments", "grants", [], rv="9", generation=4))
    ref = policy_set.object_of("payments:grants")
    assert ref is not None
    assert ref.record() == {
        "kind": "IdentityPolicy",
        "namespace": "payments",
        "name": "grants",
        "generation": 4,
        "resourceVersion": "9",
    }
    settings = policy_set.object_of(SETTINGS_KEY)
    assert settings is not None and settings.label == "PolicySettings settings"


def test_the_revision_follows_what_the_author_changes_and_not_status_writes() -> None:
    objects = reference_objects()
    revision = objects_revision(objects)
    assert revision.startswith("sha256:") and build(*objects).revision == revision
    assert objects_revision(list(reversed(objects))) == revision  # order of the list does not matter

    def changed(change: Any) -> str:
        edited = copy.deepcopy(objects)
        change(edited[1])
        return objects_revision(edited)

    def status_write(obj: Any) -> None:
        obj["metadata"]["resourceVersion"] = "999"
        obj["status"] = {"conditions": [{"type": "Accepted", "status": "False"}]}

    assert changed(status_write) == revision
    assert changed(lambda o: o["metadata"].update(generation=2, resourceVersion="999")) != revision
    assert changed(lambda o: o["metadata"]["annotations"].update({"meshsigner.io/git-sha": "abc"})) != revision
    assert changed(lambda o: o["metadata"].update(labels={"team": "a"})) != revision
    assert changed(lambda o: o["metadata"].update(uid="another")) != revision  # deleted and created again
    assert objects_revision(objects[1:]) != revision


def test_no_objects_is_not_a_set() -> None:
    with pytest.raises(PolicySetInvalid) as caught:
        build()
    nothing = "policy objects: no PolicySettings or IdentityPolicy objects found"
    assert [str(e) for e in caught.value.errors] == [nothing]


def grant_own_identity(rv: str) -> Any:
    return policy("istio-system", "own", [{"name": "own", "effect": "Allow", "identities": [OWN]}], rv=rv)


def decide(store: PolicyStore) -> Any:
    return store.decide(caller("orders", "web"), request(own_id()), now=NOW, ca_not_after=CA_NOT_AFTER)


def test_the_store_keeps_the_last_good_set_and_names_the_policy_object() -> None:
    store = PolicyStore.for_objects(trust_domain=TD, root_namespace=ROOT)
    assert not store.ready and decide(store).reason == "POLICY_SET_UNAVAILABLE"
    assert store.load_objects([settings_object(), grant_own_identity("5")])
    good = store.revision
    decision = decide(store)
    assert decision.allowed
    assert decision.details["policyObject"]["name"] == "own"
    broken = policy("istio-system", "own", [{"name": "own", "effect": "Allow", "identities": ["x"]}], rv="6")
    assert not store.load_objects([settings_object(), broken])
    assert store.revision == good and decide(store).allowed
    where = "IdentityPolicy istio-system/own: spec.rules[0].identities[0]"
    assert any(str(p).startswith(where) for p in store.last_problems)
    assert not store.load_objects([grant_own_identity("5")])  # losing the settings object is refused too
    assert store.revision == good
    assert store.status()["source"] == "kubernetes"


async def test_the_same_objects_are_not_built_twice() -> None:
    store = PolicyStore.for_objects(trust_domain=TD, root_namespace=ROOT)
    objects = [settings_object(), grant_own_identity("5")]
    assert await store.objects_changed(objects)
    assert not await store.objects_changed(copy.deepcopy(objects))
    assert store.revision == objects_revision(objects)


def test_times_in_json_are_read_as_in_yaml() -> None:
    rules = [
        {"name": "own", "effect": "Allow", "identities": [OWN], "expiresAt": "2027-01-01T00:00:00Z", "ticket": "T-1"}
    ]
    policy_set = build(settings_object(), policy("istio-system", "timed", rules))
    assert policy_set.policies[0].rules[0].expires_at == datetime(2027, 1, 1, tzinfo=UTC)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_the_status_of_each_object_says_whether_it_was_accepted_and_is_in_force() -> None:
    from policies.object_status import object_statuses

    store = PolicyStore.for_objects(trust_domain=TD, root_namespace=ROOT)
    good = [settings_object("1"), grant_own_identity("5")]
    assert store.load_objects(good)
    statuses = store.object_statuses()
    own = statuses[("IdentityPolicy", ROOT, "own")]
    assert own["observedGeneration"] == 1 and own["ruleCount"] == 1
    assert conditions(own)["Accepted"][:2] == ("True", "Valid")
    assert conditions(own)["Ready"] == ("True", "InForce", f"in force in revision {store.revision}")
    assert statuses[("PolicySettings", "", "settings")]["activeRevision"] == store.revision

    broken = policy(ROOT, "broken", [{"name": "r", "effect": "Allow", "identities": ["spiffe://{nope}/x"]}], rv="8")
    edited = policy(ROOT, "own", [{"name": "own", "effect": "Allow", "identities": [OWN]}], rv="9", generation=2)
    assert not store.load_objects([settings_object("1"), edited, broken])
    statuses = store.object_statuses()
    status, reason, message = conditions(statuses[("IdentityPolicy", ROOT, "broken")])["Accepted"]
    assert (status, reason) == ("False", "Invalid") and message.startswith("spec.rules[0].identities[0]: ")
    assert conditions(statuses[("IdentityPolicy", ROOT, "broken")])["Ready"][:2] == ("False", "Invalid")
    # the edited policy is valid, but its new generation is not in force: the set was rejected because of broken
    status, reason, message = conditions(statuses[("IdentityPolicy", ROOT, "own")])["Ready"]
    assert (status, reason) == ("False", "SetRejected")
    assert f"IdentityPolicy {ROOT}/broken: spec.rules[0].identities[0]" in message
    assert message.endswith(f"revision {store.revision} keeps deciding")
    assert conditions(statuses[("IdentityPolicy", ROOT, "own")])["Accepted"][:2] == ("True", "Valid")
    assert statuses[("IdentityPolicy", ROOT, "own")]["observedGeneration"] == 2
    # the settings object did not change: its generation is still the one in force
    assert conditions(statuses[("PolicySettings", "", "settings")])["Ready"][0] == "True"
    assert object_statuses([], [], None) == {}


def test_an_object_created_again_under_the_same_name_is_not_in_force_until_its_set_is() -> None:
    store = PolicyStore.for_objects(trust_domain=TD, root_namespace=ROOT)
    assert store.load_objects([settings_object("1"), grant_own_identity("5")])
    again = grant_own_identity("20")
    again["metadata"]["uid"] = "0d6c1d9e-0000-4000-8000-000000000002"  # deleted and created: generation 1 again
    broken = policy(ROOT, "broken", [{"name": "r", "effect": "Allow", "identities": ["spiffe://{nope}/x"]}], rv="21")
    assert not store.load_objects([settings_object("1"), again, broken])
    status, reason, _ = conditions(store.object_statuses()[("IdentityPolicy", ROOT, "own")])["Ready"]
    assert (status, reason) == ("False", "SetRejected")
