"""PolicyStore: all-or-nothing reloads, last-good serving, the watch loop and its metrics."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from prometheus_client import CollectorRegistry

from clocks import Clock
from policies.context import NamespaceLabels
from policies.decider import Decision, Outcome, Verdict
from policies.loader import build_policy_set
from policies.policy_store import PolicyStore
from tests.support.clock import ManualClock

from .conftest import CA_NOT_AFTER, DENY_ORDERS, NOW, SECTION_2_1, TD, caller, own_id, request


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    shutil.copytree(SECTION_2_1, directory)
    return directory


def store_for(
    directory: Path,
    *,
    namespace_labels: NamespaceLabels | None = None,
    poll_interval: float = 1.0,
    debounce: float = 0.5,
    clock: Clock | None = None,
) -> tuple[PolicyStore, CollectorRegistry]:
    registry = CollectorRegistry()
    store = PolicyStore(
        directory,
        trust_domain=TD,
        registry=registry,
        namespace_labels=namespace_labels,
        poll_interval=poll_interval,
        debounce=debounce,
        clock=clock,
    )
    return store, registry


def decide(store: PolicyStore, namespace: str = "orders", account: str = "web", validity: int = 3600) -> Decision:
    return store.decide(
        caller(namespace, account),
        request(own_id(namespace, account), validity=validity),
        now=NOW,
        ca_not_after=CA_NOT_AFTER,
    )


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_no_valid_set_at_start_means_not_ready_and_unavailable(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("kind: [\n")
    store, registry = store_for(tmp_path)
    assert not store.ready and store.revision is None
    decision = decide(store)
    assert (decision.verdict, decision.reason, decision.outcome) == (
        Verdict.DENY,
        "POLICY_SET_UNAVAILABLE",
        Outcome.UNAVAILABLE,
    )
    assert decision.details["clientMessage"] == store.client_message(decision)
    assert store.client_message(decision).startswith("denied: POLICY_SET_UNAVAILABLE")
    assert metric(registry, "policy_reload_total", result="error") == 1
    assert store.status()["ready"] is False and store.status()["errors"][0].startswith(f"{tmp_path}/broken.yaml:2:1:")
    shutil.copytree(SECTION_2_1, tmp_path, dirs_exist_ok=True)
    (tmp_path / "broken.yaml").unlink()
    assert store.reload() and store.ready
    assert decide(store).allowed


def test_empty_directory_is_not_a_valid_set(tmp_path: Path) -> None:
    store, _ = store_for(tmp_path)
    assert not store.ready
    assert "no *.yaml or *.yml policy files found" in str(store.last_problems[0])


def test_bad_yaml_keeps_the_last_good_set(policy_dir: Path) -> None:
    store, registry = store_for(policy_dir)
    good_revision = store.revision
    assert good_revision is not None
    before = decide(store, validity=86400)
    (policy_dir / "mesh-baseline.yaml").write_text("apiVersion: [unclosed\n")
    assert not store.reload()
    assert store.revision == good_revision and store.ready
    assert decide(store, validity=86400) == before
    assert metric(registry, "policy_reload_total", result="error") == 1
    assert metric(registry, "policy_set_info", revision=good_revision) == 1
    assert str(store.last_problems[0]).startswith(f"{policy_dir}/mesh-baseline.yaml:")


def test_a_schema_error_in_one_file_rejects_the_whole_set(policy_dir: Path) -> None:
    store, _ = store_for(policy_dir)
    (policy_dir / "freeze.yaml").write_text(DENY_ORDERS)  # valid on its own
    (policy_dir / "typo.yaml").write_text(DENY_ORDERS.replace("freeze-orders", "typo").replace("subjects", "subject"))
    assert not store.reload()
    assert decide(store).allowed  # the valid new Deny rule did not sneak in either
    errors = store.status()["errors"]
    assert len(errors) == 1 and "typo.yaml:5:3: spec.subject: unknown field 'subject'" in errors[0]
    (policy_dir / "typo.yaml").unlink()
    assert store.reload()
    assert decide(store).reason == "DENIED_BY_RULE"


STRICT_SETTINGS = """apiVersion: meshsigner.io/v1alpha1
kind: PolicySettings
metadata: {name: settings}
spec:
  trustDomain: cluster.local
  duration: {default: 1h, max: 2h}
  key: {algorithms: [ECDSA-P256]}
"""
OWN_IDENTITY = """apiVersion: meshsigner.io/v1alpha1
kind: IdentityPolicy
metadata: {name: own}
spec:
  subjects: {namespaces: ['*']}
  rules:
    - {name: own, effect: Allow, identities: ['spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}']}
"""


def test_a_reload_that_loses_the_settings_document_keeps_the_last_good_set(tmp_path: Path) -> None:
    (tmp_path / "settings.yaml").write_text(STRICT_SETTINGS)
    (tmp_path / "own.yaml").write_text(OWN_IDENTITY)
    store, registry = store_for(tmp_path)
    good = store.revision
    rsa = request(own_id(), key="RSA-2048", validity=86400)
    assert not store.decide(caller(), rsa, now=NOW, ca_not_after=CA_NOT_AFTER).allowed
    assert decide(store, validity=86400).duration_seconds == 7200

    (tmp_path / "settings.yaml").unlink()  # e.g. a ConfigMap key renamed by mistake
    assert not store.reload()
    assert store.revision == good and store.ready
    errors = store.status()["errors"]
    assert len(errors) == 1 and "no PolicySettings document but the active one has" in errors[0]
    assert errors[0].startswith(f"{tmp_path}:1:1:")
    assert metric(registry, "policy_reload_total", result="error") == 1
    # Still the operator's settings, not the looser defaults (any RSA size >= 2048, 7d).
    assert not store.decide(caller(), rsa, now=NOW, ca_not_after=CA_NOT_AFTER).allowed
    assert decide(store, validity=86400).duration_seconds == 7200

    (tmp_path / "settings.yaml").write_text(STRICT_SETTINGS)
    assert store.reload() and store.revision == good  # restored: the same content, the same revision


def test_a_set_without_settings_loads_at_start_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "own.yaml").write_text(OWN_IDENTITY)
    store, _ = store_for(tmp_path)
    assert store.ready and store.policy_set is not None and not store.policy_set.has_settings_document
    (warning,) = store.status()["warnings"]
    assert warning.startswith(f"{tmp_path}/own.yaml:1:1: warning: the set has no PolicySettings document")
    (tmp_path / "other.yaml").write_text(OWN_IDENTITY.replace("name: own}", "name: other}"))
    assert store.reload()  # no settings before either: nothing is lost


def test_metrics_of_decisions_and_audit_findings(policy_dir: Path) -> None:
    store, registry = store_for(policy_dir)
    decide(store, validity=86400)
    decide(store, "prod-a", "default")
    granted = dict(decision="Allow", reason="GRANTED", policy="mesh-baseline", rule="own-identity", mode="Enforce")
    denied = dict(decision="Deny", reason="DENIED_BY_RULE", policy="compliance-denies", rule="no-default-sa-in-prod")
    assert metric(registry, "policy_decisions_total", **granted) == 1
    assert metric(registry, "policy_decisions_total", **denied, mode="Enforce") == 1
    finding = dict(policy="tighten-to-12h", rule="limits", finding="AUDIT_WOULD_CLAMP")
    assert metric(registry, "policy_audit_findings_total", **finding) == 1
    assert metric(registry, "policy_evaluation_seconds_count") == 2
    assert metric(registry, "policy_reload_total", result="success") == 1
    assert metric(registry, "policy_last_reload_success_timestamp_seconds") == store.status()["activeSince"]


def test_namespace_labels_come_from_the_provider(policy_dir: Path) -> None:
    (policy_dir / "tiered.yaml").write_text(
        DENY_ORDERS.replace("namespaces: [orders]", "namespaceSelector: {matchLabels: {mesh.example.org/tier: frozen}}")
    )
    labels: dict[str, dict[str, str]] = {}
    store, _ = store_for(policy_dir, namespace_labels=labels.get)
    assert store.needs_namespace_labels
    unsynced = decide(store)
    assert (unsynced.reason, unsynced.outcome) == ("EVALUATION_ERROR", Outcome.UNAVAILABLE)
    labels["orders"] = {"mesh.example.org/tier": "frozen"}
    assert decide(store).reason == "DENIED_BY_RULE"
    labels["orders"] = {}
    assert decide(store).allowed


def test_an_exception_during_evaluation_is_a_retryable_denial(
    policy_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (policy_dir / "tiered.yaml").write_text(
        DENY_ORDERS.replace("namespaces: [orders]", "namespaceSelector: {matchLabels: {mesh.example.org/tier: frozen}}")
    )

    def broken_provider(namespace: str) -> dict[str, str]:
        raise RuntimeError("informer exploded")

    store, registry = store_for(policy_dir, namespace_labels=broken_provider)
    logged: list[str] = []
    handler = logger.add(logged.append, level="ERROR")
    try:
        decision = decide(store)
    finally:
        logger.remove(handler)
    assert (decision.verdict, decision.reason, decision.outcome) == (
        Verdict.DENY,
        "EVALUATION_ERROR",
        Outcome.UNAVAILABLE,
    )
    assert decision.policy_set_revision == store.revision
    assert str(decision.details["clientMessage"]).startswith("denied: EVALUATION_ERROR")
    assert any("evaluation failed for orders/web" in line and "informer exploded" in line for line in logged)
    assert (
        metric(
            registry, "policy_decisions_total", decision="Deny", reason="EVALUATION_ERROR", policy="", rule="", mode=""
        )
        == 1
    )

    def overflow(*args: object, **kwargs: object) -> None:
        raise OverflowError("date value out of range")

    monkeypatch.setattr("policies.policy_store.evaluate", overflow)
    assert decide(store, "payments", "api").reason == "EVALUATION_ERROR"


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (in real time, for a worker thread) until ``condition`` holds; ``timeout`` only bounds a hang."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


class Watching:
    """A store's watch loop on a ManualClock: ``poll`` lets one poll interval pass and waits until the loop has
    handled it (read the directory, built and installed a stable change) and is sleeping again."""

    def __init__(self, store: PolicyStore, clock: ManualClock, poll_interval: float) -> None:
        self.store, self.clock, self.poll_interval = store, clock, poll_interval
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watching:
        self.task = asyncio.create_task(self.store.watch(self.stop))
        await wait_for(lambda: self.clock.sleeper_count == 1)
        return self

    async def poll(self, times: int = 1) -> None:
        for _ in range(times):
            await self.clock.advance(self.poll_interval)
            await wait_for(lambda: self.clock.sleeper_count == 1)

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)
        assert self.task.exception() is None


def watched_store(directory: Path, *, debounce: float = 0.5) -> tuple[Watching, CollectorRegistry]:
    clock = ManualClock()
    store, registry = store_for(directory, poll_interval=1.0, debounce=debounce, clock=clock)
    return Watching(store, clock, 1.0), registry


async def test_watch_reloads_changes_and_survives_bad_ones(policy_dir: Path) -> None:
    watching, registry = watched_store(policy_dir)
    store = watching.store
    first = store.revision
    async with watching:
        (policy_dir / "freeze.yaml").write_text(DENY_ORDERS)
        await watching.poll()  # seen, not yet stable
        assert store.revision == first
        await watching.poll()  # stable for a poll interval, longer than the debounce: loaded
        assert store.revision != first and decide(store).reason == "DENIED_BY_RULE"
        frozen = store.revision
        (policy_dir / "freeze.yaml").write_text(DENY_ORDERS + "  bogus: 1\n")
        await watching.poll(2)
        assert metric(registry, "policy_reload_total", result="error") == 1
        assert store.revision == frozen and decide(store).reason == "DENIED_BY_RULE"
        await watching.poll(3)  # an unchanged bad file is not retried
        assert metric(registry, "policy_reload_total", result="error") == 1
        (policy_dir / "freeze.yaml").unlink()
        await watching.poll(2)
        assert store.revision == first and decide(store).allowed
        assert store.status()["activeSince"] == watching.clock.now().timestamp()


async def test_watch_debounces_a_burst_of_writes(policy_dir: Path) -> None:
    watching, registry = watched_store(policy_dir, debounce=2.0)
    async with watching:
        for step in range(1, 5):  # a half-written set must never be loaded
            (policy_dir / "freeze.yaml").write_text(DENY_ORDERS[: len(DENY_ORDERS) * step // 5])
            await watching.poll()
        (policy_dir / "freeze.yaml").write_text(DENY_ORDERS)
        await watching.poll(2)  # changed one and then two poll intervals ago: not yet stable for 2s
        assert metric(registry, "policy_reload_total", result="success") == 1
        await watching.poll()
        assert metric(registry, "policy_reload_total", result="success") == 2
        assert metric(registry, "policy_reload_total", result="error") is None
        assert decide(watching.store).reason == "DENIED_BY_RULE"


async def test_watch_stops_when_asked_without_waiting_for_the_clock(policy_dir: Path) -> None:
    watching, _ = watched_store(policy_dir)
    async with watching:
        pass  # __aexit__ sets stop and the loop ends although the ManualClock never advances


async def test_watch_builds_the_new_set_off_the_event_loop(policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large set takes hundreds of milliseconds to build; the event loop must keep serving meanwhile, and only
    the swap of the active set may run on it."""
    watching, _ = watched_store(policy_dir)
    store = watching.store
    first = store.revision
    loop_thread = threading.current_thread()
    building, release = threading.Event(), threading.Event()
    build_threads: list[threading.Thread] = []
    real_build = build_policy_set

    def blocking_build(*args: Any, **kwargs: Any) -> Any:
        build_threads.append(threading.current_thread())
        building.set()
        release.wait(10)  # if this ran on the loop, the test below could not run until it timed out
        return real_build(*args, **kwargs)

    monkeypatch.setattr("policies.policy_store.build_policy_set", blocking_build)
    installed_on: list[int | None] = []
    handler = logger.add(
        lambda message: installed_on.append(message.record["thread"].id),
        filter=lambda record: " active: " in record["message"],
    )
    try:
        async with watching:
            (policy_dir / "freeze.yaml").write_text(DENY_ORDERS)
            await watching.poll()
            await watching.clock.advance(watching.poll_interval)  # stable now: the build starts
            await wait_for(building.is_set)
            assert decide(store).allowed and store.revision == first  # still serving the old set meanwhile
            release.set()
            await wait_for(lambda: store.revision != first)
            await wait_for(lambda: watching.clock.sleeper_count == 1)
        assert build_threads and all(thread is not loop_thread for thread in build_threads)
        assert installed_on == [loop_thread.ident]
        assert decide(store).reason == "DENIED_BY_RULE"
    finally:
        logger.remove(handler)
