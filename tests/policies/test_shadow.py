"""The shadow policy set: decided on every request without effect, reported in records and metrics, loaded with
its own last good set from ``<policy dir>/<settings.shadowPolicySet>/``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from policies.decider import Decision
from policies.decision_records import decision_record
from policies.loader import build_policy_set
from policies.problems import PolicySetInvalid
from tests.policies.conftest import DENY_ORDERS, SECTION_2_1, SETTINGS, TD, caller, own_id, request
from tests.policies.test_commands import run
from tests.policies.test_policy_store import decide, store_for


def name_shadow(directory: Path, name: str | None) -> None:
    settings = directory / "settings.yaml"
    lines = [line for line in settings.read_text().splitlines() if "shadowPolicySet" not in line]
    if name is not None:
        lines.append(f"  shadowPolicySet: {name}")
    settings.write_text("\n".join(lines) + "\n")


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """The §2.1 set, naming shadow set "next": the same set plus a Deny rule freezing namespace orders."""
    directory = tmp_path / "policies"
    shutil.copytree(SECTION_2_1, directory)
    shutil.copytree(SECTION_2_1, directory / "next")
    (directory / "next" / "freeze.yaml").write_text(DENY_ORDERS)
    name_shadow(directory, "next")
    return directory


def shadow_of(decision: Decision) -> dict[str, Any]:
    report = decision.details["shadow"]
    assert isinstance(report, dict)
    return report


def shadow_count(registry: CollectorRegistry, enforced: str, shadow: str, difference: str) -> float | None:
    labels = {"enforced": enforced, "shadow": shadow, "difference": difference}
    return registry.get_sample_value("policy_shadow_decisions_total", labels)


def test_the_shadow_set_never_changes_the_answer_and_reports_the_difference(policy_dir: Path) -> None:
    store, registry = store_for(policy_dir)
    assert store.shadow_set is not None and store.shadow_set.revision != store.revision
    decision = decide(store)
    assert decision.allowed and decision.granted_by == "mesh-baseline/own-identity"
    shadow = shadow_of(decision)
    assert shadow == {
        "policySet": "next",
        "policySetRevision": store.shadow_set.revision,
        "decision": "Deny",
        "reason": "DENIED_BY_RULE",
        "matched": "freeze-orders/freeze",
        "durationSeconds": None,
        "message": "orders is frozen",
        "difference": "WOULD_DENY",
    }
    assert shadow_count(registry, "Allow", "Deny", "WOULD_DENY") == 1
    record = decision_record("d1", caller(), request(own_id()), decision)
    assert record["decision"] == "Allow" and record["shadow"]["difference"] == "WOULD_DENY"
    assert shadow_of(decide(store, "payments", "api"))["difference"] == "SAME"
    assert shadow_count(registry, "Allow", "Allow", "SAME") == 1


def test_without_a_shadow_set_records_carry_no_shadow(tmp_path: Path) -> None:
    shutil.copytree(SECTION_2_1, tmp_path / "p")
    store, _ = store_for(tmp_path / "p")
    decision = decide(store)
    assert store.shadow_set is None and "shadow" not in decision.details
    assert "shadow" not in decision_record("d", caller(), request(own_id()), decision)
    assert store.status()["shadow"] is None


def test_a_broken_shadow_set_keeps_its_last_good_and_never_touches_the_enforced_one(policy_dir: Path) -> None:
    store, registry = store_for(policy_dir)
    good_shadow = store.shadow_set
    assert good_shadow is not None
    (policy_dir / "next" / "freeze.yaml").write_text(DENY_ORDERS.replace("subjects", "subject"))
    assert store.reload()  # the enforced set itself is valid: the reload succeeds
    assert store.shadow_set is good_shadow
    assert shadow_of(decide(store))["difference"] == "WOULD_DENY"
    status = store.status()["shadow"]
    assert status["ready"] is True and status["revision"] == good_shadow.revision
    assert status["errors"][0].startswith(f"{policy_dir}/next/freeze.yaml:")
    assert registry.get_sample_value("policy_shadow_reload_total", {"result": "error"}) == 1
    assert registry.get_sample_value("policy_shadow_set_info", {"revision": good_shadow.revision}) == 1


def test_an_edited_shadow_set_is_picked_up_on_reload(policy_dir: Path) -> None:
    store, _ = store_for(policy_dir)
    (policy_dir / "next" / "freeze.yaml").unlink()
    assert store.reload()
    assert shadow_of(decide(store))["difference"] == "SAME"


def test_a_missing_shadow_directory_is_reported_and_the_enforced_set_serves(policy_dir: Path) -> None:
    name_shadow(policy_dir, "absent")
    store, _ = store_for(policy_dir)
    assert store.ready and store.shadow_set is None
    assert "shadow" not in decide(store).details
    status = store.status()["shadow"]
    assert status["name"] == "absent" and status["ready"] is False
    assert "settings.shadowPolicySet names this directory; it is missing" in status["errors"][0]


def test_renaming_or_removing_the_shadow_set_drops_the_old_one(policy_dir: Path) -> None:
    store, registry = store_for(policy_dir)
    old = store.shadow_set
    assert old is not None
    name_shadow(policy_dir, "absent")
    assert store.reload()
    assert store.shadow_set is None  # the last good set of "next" is not a last good set of "absent"
    name_shadow(policy_dir, None)
    assert store.reload()
    assert store.status()["shadow"] is None
    assert registry.get_sample_value("policy_shadow_set_info", {"revision": old.revision}) is None


def test_a_rejected_enforced_set_keeps_its_shadow_name(policy_dir: Path) -> None:
    store, _ = store_for(policy_dir)
    (policy_dir / "mesh-baseline.yaml").write_text("apiVersion: [\n")
    assert not store.reload()
    assert store.shadow_set is not None
    assert shadow_of(decide(store))["difference"] == "WOULD_DENY"


def test_a_shadow_set_cannot_name_its_own_shadow(policy_dir: Path) -> None:
    name_shadow(policy_dir / "next", "deeper")
    store, _ = store_for(policy_dir)
    assert store.shadow_set is None
    assert "a shadow set cannot name another" in store.status()["shadow"]["errors"][0]


@pytest.mark.parametrize("name", ["../etc", "Next", "a/b", ".hidden"])
def test_the_shadow_set_name_is_one_dns_label(name: str) -> None:
    settings = SETTINGS + f"  shadowPolicySet: {name!r}\n"
    with pytest.raises(PolicySetInvalid) as caught:
        build_policy_set([("s.yaml", settings)], trust_domain=TD)
    assert "spec.shadowPolicySet" in str(caught.value.errors[0])
    assert "a set name (one DNS label)" in str(caught.value.errors[0])


def test_lint_checks_the_shadow_set_too(policy_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("lint", str(policy_dir)) == 0
    assert "shadow policy set 'next' valid: 5 policies" in capsys.readouterr().out
    (policy_dir / "next" / "freeze.yaml").write_text(DENY_ORDERS.replace("subjects", "subject"))
    assert run("lint", str(policy_dir)) == 1
    assert "shadow policy set 'next' invalid: 1 error(s)" in capsys.readouterr().out
