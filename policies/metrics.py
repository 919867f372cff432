"""Prometheus metrics of the policy engine, registered on a registry the caller owns (no global registry).

Labels carry policy and rule names but never identities, so cardinality stays bounded by the policy set.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from policies.decider import Decision

_LATENCY_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 5e-2)


def _child(counter: Counter, children: dict[tuple[str, ...], Any], labels: tuple[str, ...]) -> Any:
    """``counter.labels(*labels)``, kept in ``children``: labels() takes a lock and builds a key on every call."""
    child = children.get(labels)
    if child is None:
        child = children[labels] = counter.labels(*labels)
    return child


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "policy_decisions_total",
            "Policy decisions by decision, reason, deciding policy/rule and its mode.",
            ("decision", "reason", "policy", "rule", "mode"),
            registry=registry,
        )
        self.evaluation_seconds = Histogram(
            "policy_evaluation_seconds",
            "Time to evaluate one request against the active policy set.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.audit_findings = Counter(
            "policy_audit_findings_total",
            "Findings of Audit-mode policies (they never change a response).",
            ("policy", "rule", "finding"),
            registry=registry,
        )
        self.set_info = Gauge(
            "policy_set_info",
            "The active policy set; the value is 1 for its revision.",
            ("revision",),
            registry=registry,
            multiprocess_mode="livemax",  # with --workers: every revision a live worker holds
        )
        self.reloads = Counter("policy_reload_total", "Policy set reloads by result.", ("result",), registry=registry)
        # The children of the hot-path counters (``_child``), bounded by the label sets the policy sets produce.
        self._decision_children: dict[tuple[str, ...], Any] = {}
        self._finding_children: dict[tuple[str, ...], Any] = {}
        self.shadow_decisions = Counter(
            "policy_shadow_decisions_total",
            "Decisions of the shadow policy set (settings.shadowPolicySet) next to the enforced ones; never enforced.",
            ("enforced", "shadow", "difference"),
            registry=registry,
        )
        self.shadow_set_info = Gauge(
            "policy_shadow_set_info",
            "The active shadow policy set; the value is 1 for its revision.",
            ("revision",),
            registry=registry,
        )
        self.shadow_reloads = Counter(
            "policy_shadow_reload_total", "Shadow policy set loads by result.", ("result",), registry=registry
        )
        self._shadow_children: dict[tuple[str, ...], Any] = {}
        self.last_reload_success = Gauge(
            "policy_last_reload_success_timestamp_seconds",
            "Unix time of the last successful policy set load.",
            registry=registry,
            multiprocess_mode="livemin",  # with --workers: the stalest live worker
        )

    def observe_decision(self, decision: Decision, seconds: float, *, policy: str, rule: str, mode: str) -> None:
        labels = (decision.verdict.value, decision.reason, policy, rule, mode)
        _child(self.decisions, self._decision_children, labels).inc()
        self.evaluation_seconds.observe(seconds)
        for finding in decision.audit_findings:
            key = (finding.policy, finding.rule or "", finding.finding)
            _child(self.audit_findings, self._finding_children, key).inc()

    def reloaded(self, revision: str | None, previous: str | None, *, at: float) -> None:
        """A set was installed at ``at`` (Unix time) in place of ``previous``."""
        self.reloads.labels("success").inc()
        self.last_reload_success.set(at)
        if previous is not None and previous != revision:
            self.set_info.remove(previous)
        if revision is not None:
            self.set_info.labels(revision).set(1)

    def reload_failed(self) -> None:
        self.reloads.labels("error").inc()

    def observe_shadow(self, enforced: str, shadow: str, difference: str) -> None:
        _child(self.shadow_decisions, self._shadow_children, (enforced, shadow, difference)).inc()

    def shadow_installed(self, revision: str | None) -> None:
        """The shadow set now active (None: none), after a successful load or when it was dropped."""
        self.shadow_set_info.clear()
        if revision is not None:
            self.shadow_reloads.labels("success").inc()
            self.shadow_set_info.labels(revision).set(1)

    def shadow_reload_failed(self) -> None:
        self.shadow_reloads.labels("error").inc()
