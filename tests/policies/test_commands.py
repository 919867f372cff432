"""``meshsigner policy lint|test|explain`` through the argparse wiring the CLI uses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from policies.commands import add_policy_commands

from .conftest import FIXTURES, SECTION_2_1

FIXTURE_FILES = sorted(FIXTURES.glob("*.yaml"))


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="meshsigner")
    add_policy_commands(parser.add_subparsers())
    args = parser.parse_args(["policy", *argv])
    return int(args.func(args))


def test_every_conformance_fixture_passes(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # spec.policies globs are relative to the test file, not the working directory
    assert run("test", *map(str, FIXTURE_FILES)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "FAIL" not in "\n".join(lines)
    passed = int(lines[-1].split()[0])
    assert lines[-1] == f"{passed} passed, 0 failed" and passed >= 45
    assert "rule coverage: 7/7 rules decided a case" in lines


def test_a_failing_case_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    test_file = tmp_path / "wrong.yaml"
    test_file.write_text(
        f"""apiVersion: meshsigner.io/v1alpha1
kind: PolicyTest
metadata: {{name: wrong}}
spec:
  policies: ["{SECTION_2_1}/*.yaml"]
  clock: "2026-06-01T00:00:00Z"
  cases:
    - name: expects too much
      caller: {{namespace: orders, serviceAccount: web}}
      request: {{uris: ["spiffe://cluster.local/ns/orders/sa/web"], dnsNames: [web.orders.svc], validitySeconds: 3600}}
      expect: {{decision: Allow, durationSeconds: 3600}}
    - name: right
      caller: {{namespace: orders, serviceAccount: web}}
      request: {{uris: ["spiffe://cluster.local/ns/orders/sa/web"], validitySeconds: 3600}}
      expect: {{decision: Allow, durationSeconds: 3600}}
"""
    )
    assert run("test", str(test_file)) == 1
    out = capsys.readouterr().out
    assert f"FAIL {test_file}: wrong / expects too much" in out
    assert "decision: expected Allow, got Deny (NO_MATCHING_RULE)" in out
    assert "durationSeconds: expected 3600, got None" in out
    assert "FAIL dnsNames[0]: expected no DNS names; actual web.orders.svc" in out
    assert out.splitlines()[-1] == "1 passed, 1 failed"


def test_an_invalid_test_document_counts_as_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    test_file = tmp_path / "bad.yaml"
    test_file.write_text(
        "apiVersion: meshsigner.io/v1alpha1\nkind: PolicyTest\nmetadata: {name: t}\n"
        "spec:\n  policies: [nowhere/*.yaml]\n  cases:\n    - {name: c, caler: {}, expect: {decision: Allow}}\n"
    )
    assert run("test", str(test_file)) == 1
    out = capsys.readouterr().out
    assert "spec.cases[0].caler: unknown field 'caler' (did you mean 'caller'?)" in out
    assert out.splitlines()[-1] == "0 passed, 1 failed"


def test_lint(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("lint", str(SECTION_2_1)) == 0
    assert "policy set valid: 4 policies, 7 rules, 0 warning(s), revision sha256:" in capsys.readouterr().out
    assert run("lint", str(FIXTURES / "broken")) == 1
    out = capsys.readouterr().out
    assert "broken/typo.yaml:7:33: spec.subjects.notNamespace: unknown field" in out
    assert out.splitlines()[-1] == "policy set invalid: 1 error(s)"
    assert run("lint", "--trust-domain", "other.local", str(SECTION_2_1)) == 1


def test_explain_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = run(
        "explain",
        "--policies", str(SECTION_2_1),
        "--namespace", "payments",
        "--service-account", "api",
        "--uri", "spiffe://cluster.local/ns/payments/sa/api",
        "--dns", "api.payments.svc",
        "--validity", "259200",
        "--clock", "2026-06-01T00:00:00Z",
        "--ca-not-after", "2026-07-01T00:00:00Z",
        "--output", "json",
    )  # fmt: skip
    assert code == 1
    result = json.loads(capsys.readouterr().out)
    assert result["decision"] == "Deny" and result["reason"] == "NO_MATCHING_RULE"
    assert result["subReason"] == "DURATION_TOO_LONG"
    assert result["matched"] == "payments-services/service-dns" and result["durationSeconds"] is None
    service_dns = next(p for p in result["trace"] if p["policy"] == "payments-services")["rules"][0]
    duration = next(c for c in service_dns["conditions"] if c["condition"] == "duration")
    assert duration == {
        "condition": "duration",
        "held": False,
        "expected": "0s to 48h0m0s",
        "actual": "72h0m0s",
        "code": "DURATION_TOO_LONG",
        "why": "requested 72h0m0s > max 48h0m0s (onExceed: Deny)",
    }
    skipped = next(p for p in result["trace"] if p["policy"] == "tighten-to-12h")
    assert skipped["applies"] is True and skipped["mode"] == "Audit"


def test_explain_text_allows(capsys: pytest.CaptureFixture[str]) -> None:
    code = run(
        "explain", "--policies", str(SECTION_2_1), "--namespace", "orders", "--service-account", "web",
        "--uri", "spiffe://cluster.local/ns/orders/sa/web", "--validity", "86400", "--clock", "2026-06-01T00:00:00Z",
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("decision: Allow GRANTED\n")
    assert "granted by: mesh-baseline/own-identity" in out
    assert "audit: AUDIT_WOULD_CLAMP tighten-to-12h/limits: would issue 43200s (12h0m0s) instead of 86400s" in out
    assert "policy payments-services (Enforce, priority 10): does not apply (subjects.namespaces" in out


def test_explain_with_an_invalid_set(capsys: pytest.CaptureFixture[str]) -> None:
    code = run("explain", "--policies", str(FIXTURES / "broken"), "--namespace", "a", "--service-account", "b")
    assert code == 2
    assert "POLICY_SET_UNAVAILABLE" in capsys.readouterr().err


def test_expectations_are_checked_field_by_field() -> None:
    from policies.decider import Decision, Outcome, Verdict
    from policies.expectations import expectation_mismatches as compare

    clamped = Decision(
        Verdict.ALLOW, Outcome.OK, "GRANTED", "granted by a/b", duration_seconds=60, granted_by="a/b",
        flags=("DURATION_CLAMPED",),
    )  # fmt: skip
    assert compare({"decision": "Allow", "reason": "DURATION_CLAMPED", "flags": ["DURATION_CLAMPED"]}, clamped) == []
    assert compare({"decision": "Allow", "flags": []}, clamped) == ["flags: expected [], got ['DURATION_CLAMPED']"]
    assert compare({"decision": "Deny", "matched": "a/c", "durationSeconds": 61}, clamped) == [
        "decision: expected Deny, got Allow (GRANTED)",
        "matched: expected a/c, got a/b",
        "durationSeconds: expected 61, got 60",
    ]


def run_live(objects: list[dict], *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="meshsigner")
    asked: list[tuple[str, str]] = []

    def live_objects(kubeconfig: str, selector: str) -> list[dict]:
        asked.append((kubeconfig, selector))
        return objects

    add_policy_commands(parser.add_subparsers(), live_objects=live_objects)
    args = parser.parse_args(["policy", *argv])
    code = int(args.func(args))
    assert asked == [("/k", "team=a")]
    return code


def live_policy(identity: str) -> dict:
    return {
        "apiVersion": "meshsigner.io/v1alpha1",
        "kind": "IdentityPolicy",
        "metadata": {"name": "own", "namespace": "istio-system", "generation": 3, "resourceVersion": "12"},
        "spec": {"rules": [{"name": "own", "effect": "Allow", "identities": [identity]}]},
    }


OWN_TEMPLATE = "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"


def test_lint_reads_the_live_set_with_kubeconfig(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_live([live_policy(OWN_TEMPLATE)], "lint", "--kubeconfig=/k", "--label-selector=team=a") == 0
    assert "live policy set valid: 1 policies, 1 rules, revision sha256:" in capsys.readouterr().out
    broken = live_policy("spiffe://{trustDomain}/ns/{namespace}/sa/{nope}")
    assert run_live([broken], "lint", "--kubeconfig=/k", "--label-selector=team=a") == 1
    out = capsys.readouterr().out
    assert "IdentityPolicy istio-system/own: spec.rules[0].identities[0]: unknown variable {nope}" in out
    assert out.splitlines()[-1] == "live policy set invalid: 1 error(s)"


def test_lint_of_the_live_set_also_lints_its_shadow_set(capsys: pytest.CaptureFixture[str]) -> None:
    settings = {
        "apiVersion": "meshsigner.io/v1alpha1",
        "kind": "PolicySettings",
        "metadata": {"name": "settings", "generation": 1, "resourceVersion": "2"},
        "spec": {"trustDomain": "cluster.local", "shadowPolicySet": "next"},
    }
    shadow = live_policy("spiffe://{trustDomain}/ns/{namespace}/sa/{nope}")
    shadow["metadata"] = {**shadow["metadata"], "name": "next-own", "labels": {"meshsigner.io/policy-set": "next"}}
    assert (
        run_live([settings, live_policy(OWN_TEMPLATE), shadow], "lint", "--kubeconfig=/k", "--label-selector=team=a")
        == 1
    )
    out = capsys.readouterr().out
    assert "live policy set valid: 1 policies" in out  # the labelled object is not part of the enforced set
    assert "IdentityPolicy istio-system/next-own: spec.rules[0].identities[0]: unknown variable {nope}" in out
    assert out.splitlines()[-1] == "live shadow policy set 'next' invalid: 1 error(s)"


def test_explain_reads_the_live_set_with_kubeconfig(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["explain", "--kubeconfig=/k", "--label-selector=team=a", "--namespace=orders", "--service-account=web"]
    uri = "--uri=spiffe://cluster.local/ns/orders/sa/web"
    assert run_live([live_policy(OWN_TEMPLATE)], *argv, uri, "--output=json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["decision"] == "Allow" and result["matched"] == "own/own"


def test_one_source_at_a_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("lint") == 2
    assert run("lint", str(SECTION_2_1), "--kubeconfig=/k") == 2
    assert "not both" in capsys.readouterr().err
    assert run("lint", "--kubeconfig=/k") == 2  # no reader given: this build reads no cluster
