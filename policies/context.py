"""What one evaluation knows about its request, and the condition records explain is built from.

The context is made once per decision: it parses nothing itself (step 0 already did) but derives what every
rule asks about, such as template values, DNS labels and the caller's principal, and fetches namespace labels at
most once, only when a policy actually needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from policies.conditions import bindings_for
from policies.decider import Caller, IssuanceRequest
from policies.spiffe import SpiffeID
from policies.templates import LABEL_PREFIX, valid_dns_name

if TYPE_CHECKING:  # rule_checks reads this context, so the import would be circular at run time
    from policies.rule_checks import RuleResult

NamespaceLabels = Callable[[str], "Mapping[str, str] | None"]


class LabelsUnavailable(Exception):
    """Namespace labels are needed but the provider has none yet (informer not synced)."""


@dataclass(frozen=True, slots=True)
class Check:
    """One condition of a policy or rule: whether it held, and expected vs actual for explain."""

    condition: str  # e.g. subjects.namespaces, identities, dnsNames[0], duration
    held: bool
    expected: str
    actual: str
    code: str | None = None  # the sub-reason when it failed: IDENTITY_NOT_ALLOWED, DURATION_TOO_LONG, ...
    note: str | None = None  # a ready sentence for messages, when expected/actual alone read badly

    @property
    def sentence(self) -> str:
        return self.note or f"{self.condition} {self.actual!r} not allowed (expected {self.expected})"

    def as_dict(self) -> dict[str, object]:
        result: dict[str, object] = {
            "condition": self.condition,
            "held": self.held,
            "expected": self.expected,
            "actual": self.actual,
        }
        if self.code and not self.held:
            result["code"] = self.code
        return result


class EvaluationContext:
    __slots__ = (
        "_cel_values",
        "_label_cache",
        "_labels",
        "_trusted_label_keys",
        "allow_results",
        "ca_not_after",
        "caller",
        "condition_results",
        "deny_matches",
        "dns_labels",
        "now",
        "primary_trust_domain",
        "principal",
        "request",
        "unsure_rules",
        "uri_texts",
        "uris",
        "values",
        "workload",
    )

    def __init__(
        self,
        caller: Caller,
        request: IssuanceRequest,
        uris: tuple[SpiffeID, ...],
        *,
        now: datetime,
        ca_not_after: datetime | None,
        primary_trust_domain: str,
        cluster_domain: str,
        namespace_labels: NamespaceLabels | None,
        trusted_label_keys: frozenset[str] = frozenset(),
    ) -> None:
        self.caller = caller
        self.request = request
        self.uris = uris
        # The IDs exactly as requested (or stamped): they were parsed without normalising, so they are canonical.
        self.uri_texts: tuple[str, ...] = request.uris if request.uris else tuple(str(u) for u in uris)
        self.now = now
        self.ca_not_after = ca_not_after
        self.primary_trust_domain = primary_trust_domain
        self.principal = f"{primary_trust_domain}/ns/{caller.namespace}/sa/{caller.service_account}"
        self.workload = f"{caller.namespace}/{caller.service_account}"
        self.values: dict[str, str] = {
            "trustDomain": primary_trust_domain,
            "namespace": caller.namespace,
            "serviceAccount": caller.service_account,
            "clusterDomain": cluster_domain,
        }
        if caller.pod_name:
            self.values["podName"] = caller.pod_name
        if caller.pod_uid:
            self.values["podUID"] = caller.pod_uid
        # None marks a requested name that is not a valid DNS name: it can then match no rule.
        self.dns_labels: tuple[tuple[str, ...] | None, ...] = tuple(
            tuple(name.split(".")) if valid_dns_name(name) else None for name in request.dns_names
        )
        self._labels = namespace_labels
        self._label_cache: Mapping[str, str] | None = None
        # Rule answers by id(rule), reused by the Audit shadow: a rule's answer cannot change within a decision.
        self.allow_results: dict[int, RuleResult] = {}
        self.deny_matches: dict[int, bool] = {}
        # ``when`` results by id(rule), one entry per condition (True, False or the error text), and the rules
        # that would have matched but for a condition that did not evaluate (deny when unsure).
        self.condition_results: dict[int, tuple[bool | str, ...]] = {}
        self.unsure_rules: dict[int, str] = {}
        self._trusted_label_keys = trusted_label_keys
        self._cel_values: dict[str, object] = {}

    def labels(self) -> Mapping[str, str]:
        """The caller namespace's labels; raises LabelsUnavailable when the provider has not synced."""
        if self._label_cache is None:
            labels = self._labels(self.caller.namespace) if self._labels is not None else None
            if labels is None:
                raise LabelsUnavailable(f"labels of namespace {self.caller.namespace!r} are not available yet")
            self._label_cache = labels
        return self._label_cache

    def condition_values(self, wanted: frozenset[str]) -> dict[str, object] | str:
        """The CEL variables ``wanted`` (conditions.py), built once per decision; or why the inputs are over the
        caps. Raises LabelsUnavailable when ``namespaceLabels`` is wanted and not synced."""
        missing = wanted - self._cel_values.keys()
        if missing:
            built = bindings_for(
                caller=self._caller_field,
                uris=self.uri_texts,
                dns_names=self.request.dns_names,
                usages=self.request.usages,
                key=self.request.key,
                validity_seconds=self.request.validity_seconds,
                now=self.now,
                labels=self._trusted_labels,
                wanted=frozenset(missing),
            )
            if isinstance(built, str):
                return built
            self._cel_values.update(built)
        return self._cel_values

    def _caller_field(self, name: str) -> str:
        """``caller.<name>`` for conditions; an absent value is the empty string."""
        caller = self.caller
        value = {
            "trustDomain": caller.trust_domain,
            "namespace": caller.namespace,
            "serviceAccount": caller.service_account,
            "principal": self.principal,
            "spiffeID": f"spiffe://{self.principal}",
            "podName": caller.pod_name,
            "podUID": caller.pod_uid,
            "nodePrincipal": caller.node_principal,
        }.get(name)
        return value or ""

    def _trusted_labels(self) -> Mapping[str, str]:
        """The labels a condition may read: the trusted keys, and the name label the API server sets."""
        labels = {k: v for k, v in self.labels().items() if k in self._trusted_label_keys}
        labels["kubernetes.io/metadata.name"] = self.caller.namespace
        return labels

    def lookup(self, name: str) -> str | None:
        """A template variable's value for this caller, or None when it has none."""
        value = self.values.get(name)
        if value is None and name.startswith(LABEL_PREFIX):
            return self.labels().get(name[len(LABEL_PREFIX) :])
        return value
