"""The policy store the server holds: the active set, hot reload from a directory or Kubernetes objects, metrics.

The store is an ``IdentityDecider``. With a directory, it loads every ``*.yaml``/``*.yml`` file of it as one set;
``watch`` reloads once a change of the directory has been stable (``directory_watch.py``). With the Kubernetes
source (``PolicyStore.for_objects``), the policy objects' watch (bridge/policy_objects.py, connected by ``serve``)
hands every object to ``objects_changed``. Either way a reload is all-or-nothing, so any error keeps the last good
set serving (a skipped document could drop a Deny rule and fail open).
With no valid set the store is not ready and denies every request with POLICY_SET_UNAVAILABLE (retryable).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry

from clocks import Clock, SystemClock
from policies.client_messages import client_message
from policies.context import NamespaceLabels
from policies.decider import Caller, Decision, IssuanceRequest, Outcome, deny, matched_rule
from policies.directory_watch import DirectorySnapshot, read_snapshot, stable_changes
from policies.evaluator import evaluate
from policies.explain import Explanation, explain
from policies.loader import build_policy_set
from policies.metrics import PolicyMetrics
from policies.object_documents import (
    OBJECTS_ORIGIN,
    build_object_policy_set,
    build_object_shadow_set,
    objects_revision,
)
from policies.object_status import ObjectKey, object_statuses_of_sets
from policies.policy_set import PolicySet
from policies.problems import PolicySetInvalid, Problem, Severity
from policies.shadow import shadow_error_report, shadow_report

_ShadowBuild = tuple[str, PolicySet | PolicySetInvalid]  # the shadow set's name and its build result


def _log_rejection(what: str, kept: str, problems: list[Problem]) -> None:
    logger.error("{} rejected ({}):", what, kept)
    for problem in problems:
        (logger.error if problem.severity is Severity.ERROR else logger.warning)("  {}", problem)


class PolicyStore:
    """Serves decisions from the last good policy set of ``directory`` (or of the Kubernetes objects: ``for_objects``).

    Args:
        directory: the policy directory (not recursive); None for the Kubernetes source.
        trust_domain: the server's trust domain; a PolicySettings naming another one is an error.
        registry: where the metrics are registered (a private registry when None).
        namespace_labels: returns a namespace's labels, or None while the informer has not synced.
        poll_interval: seconds between content checks in ``watch``.
        debounce: seconds a change must be stable before it is loaded.
        clock: times the polls and the debounce, and stamps ``activeSince`` (the system clock when None).
    """

    def __init__(
        self,
        directory: str | Path | None,
        *,
        trust_domain: str,
        registry: CollectorRegistry | None = None,
        namespace_labels: NamespaceLabels | None = None,
        poll_interval: float = 1.0,
        debounce: float = 0.5,
        clock: Clock | None = None,
        root_namespace: str | None = None,
    ) -> None:
        self._directory = Path(directory) if directory is not None else None
        self._root_namespace = root_namespace
        self._trust_domain = trust_domain
        self._metrics = PolicyMetrics(registry if registry is not None else CollectorRegistry())
        self._namespace_labels = namespace_labels
        self._poll_interval = poll_interval
        self._debounce = debounce
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._active: PolicySet | None = None
        self._active_since: float | None = None
        self._last_problems: list[Problem] = []
        self._attempted_digest: str | None = None
        self._shadow: PolicySet | None = None
        self._shadow_name: str | None = None
        self._shadow_problems: list[Problem] = []
        self._last_objects: list[Mapping[str, Any]] = []  # the last build's input (the Kubernetes source)
        if self._directory is not None:
            self.reload()

    @classmethod
    def for_objects(
        cls,
        *,
        trust_domain: str,
        root_namespace: str,
        registry: CollectorRegistry | None = None,
        namespace_labels: NamespaceLabels | None = None,
        clock: Clock | None = None,
    ) -> PolicyStore:
        """A store fed with Kubernetes objects (``objects_changed``); not ready until the first valid set.

        ``root_namespace``: IdentityPolicy objects there apply mesh-wide; elsewhere, to their namespace only."""
        return cls(
            None,
            trust_domain=trust_domain,
            registry=registry,
            namespace_labels=namespace_labels,
            clock=clock,
            root_namespace=root_namespace,
        )

    @property
    def source_name(self) -> str:
        """What the logs and the status call the source: the directory, or the policy objects."""
        return str(self._directory) if self._directory is not None else OBJECTS_ORIGIN

    @property
    def ready(self) -> bool:
        return self._active is not None

    @property
    def revision(self) -> str | None:
        return self._active.revision if self._active is not None else None

    @property
    def policy_set(self) -> PolicySet | None:
        return self._active

    @property
    def needs_namespace_labels(self) -> bool:
        return self._active is not None and self._active.needs_namespace_labels

    @property
    def last_problems(self) -> list[Problem]:
        """Errors and warnings of the last load attempt (empty when it was clean)."""
        return list(self._last_problems)

    @property
    def shadow_set(self) -> PolicySet | None:
        """The active shadow set (``settings.shadowPolicySet``), or None."""
        return self._shadow

    @property
    def shadow_problems(self) -> list[Problem]:
        """Errors and warnings of the last shadow set load attempt."""
        return list(self._shadow_problems)

    def reload(self) -> bool:
        """Load the directory now. Returns True when a valid set is active afterwards and it is the new one."""
        if self._directory is None:
            raise RuntimeError("a store of Kubernetes objects has no directory to reload: use objects_changed")
        snapshot = read_snapshot(self._directory)
        return self._install(*self._build_both(snapshot, self._directory), snapshot.digest)

    def load_objects(self, objects: Sequence[Mapping[str, Any]]) -> bool:
        """Build and install a set from every policy object now (the Kubernetes source). Returns True when the
        new set is active; otherwise the last good set keeps deciding and ``last_problems`` says why."""
        return self._install_objects(objects, objects_revision(objects), *self._build_objects(objects))

    async def objects_changed(self, objects: Sequence[Mapping[str, Any]]) -> bool:
        """``load_objects``, building in a worker thread (requests keep being served meanwhile). The same objects
        (same resourceVersions) as the last attempt are not built again."""
        digest = objects_revision(objects)
        if digest == self._attempted_digest:
            return False
        return self._install_objects(objects, digest, *await asyncio.to_thread(self._build_objects, objects))

    def _install_objects(
        self,
        objects: Sequence[Mapping[str, Any]],
        digest: str,
        built: PolicySet | PolicySetInvalid,
        shadow: _ShadowBuild | None,
    ) -> bool:
        self._last_objects = list(objects)  # what the statuses are worked out from
        return self._install(built, shadow, digest)

    def object_statuses(self) -> dict[ObjectKey, dict[str, Any]]:
        """The status each policy object of the last build should show (``object_status.py``): for the leader's
        status writer): the enforced set's, the shadow set's (labelled objects) and those of sets in no use."""
        shadow = (self._shadow_name, self._shadow_problems, self._shadow) if self._shadow_name is not None else None
        return object_statuses_of_sets(self._last_objects, self._last_problems, self._active, shadow)

    def _build_objects(
        self, objects: Sequence[Mapping[str, Any]]
    ) -> tuple[PolicySet | PolicySetInvalid, _ShadowBuild | None]:
        root = self._root_namespace or ""
        built = self._guarded(
            OBJECTS_ORIGIN,
            lambda: build_object_policy_set(objects, trust_domain=self._trust_domain, root_namespace=root),
        )
        name = self._shadow_name_for(built)
        if name is None:
            return built, None
        shadow = self._guarded(
            f"shadow set {name}",
            lambda: build_object_shadow_set(objects, name, trust_domain=self._trust_domain, root_namespace=root),
        )
        return built, (name, shadow)

    def _shadow_name_for(self, built: PolicySet | PolicySetInvalid) -> str | None:
        """The shadow set the new settings (or the active set's, when the new set is rejected) name."""
        source = built if isinstance(built, PolicySet) else self._active
        return source.settings.shadow_policy_set if source is not None else None

    def _build_both(
        self, snapshot: DirectorySnapshot, root: Path
    ) -> tuple[PolicySet | PolicySetInvalid, _ShadowBuild | None]:
        """The enforced set, and the shadow set its settings (or the active set's, when it is rejected) name."""
        built = self._build(snapshot, root)
        name = self._shadow_name_for(built)
        if name is None:
            return built, None
        directory = root / name
        subset = snapshot.subset(name)
        if subset is None:
            missing = Problem(str(directory), 1, 1, "", "settings.shadowPolicySet names this directory; it is missing")
            return built, (name, PolicySetInvalid([missing]))
        shadow = self._build(subset, directory)
        if isinstance(shadow, PolicySet) and shadow.settings.shadow_policy_set is not None:
            nested = Problem(shadow.settings.source, 1, 1, "spec.shadowPolicySet", "a shadow set cannot name another")
            shadow = PolicySetInvalid([nested])
        return built, (name, shadow)

    def _build(self, snapshot: DirectorySnapshot, directory: Path) -> PolicySet | PolicySetInvalid:
        """Parse, validate and compile a new set. Touches no state of the store."""
        read_problems = list(snapshot.problems)
        if not snapshot.sources and not read_problems:
            read_problems = [Problem(str(directory), 1, 1, "", "no *.yaml or *.yml policy files found")]
        return self._guarded(
            str(directory),
            lambda: build_policy_set(snapshot.sources, trust_domain=self._trust_domain, problems=read_problems),
        )

    @staticmethod
    def _guarded(where: str, build: Callable[[], PolicySet]) -> PolicySet | PolicySetInvalid:
        try:
            return build()
        except PolicySetInvalid as exc:
            return exc
        except Exception as exc:  # a loader bug must not end the watch nor replace the last good set
            logger.exception("policy: unexpected error while loading {}", where)
            return PolicySetInvalid([Problem(where, 1, 1, "", f"internal error while loading: {exc!r}")])

    def _install_shadow(self, shadow: _ShadowBuild | None) -> None:
        """The shadow set keeps its own last good set, as long as the settings keep naming the same set."""
        if shadow is None:
            if self._shadow is not None:
                logger.info("policy: shadow set {} dropped (settings.shadowPolicySet removed)", self._shadow_name)
            self._shadow, self._shadow_name, self._shadow_problems = None, None, []
            self._metrics.shadow_installed(None)
            return
        name, built = shadow
        if isinstance(built, PolicySetInvalid):
            if self._shadow_name != name:
                self._shadow, self._shadow_name = None, name
                self._metrics.shadow_installed(None)
            self._shadow_problems = built.problems
            self._metrics.shadow_reload_failed()
            active = self._shadow
            kept = f"keeping revision {active.revision}" if active is not None else "no shadow set is active"
            _log_rejection(f"policy: shadow set {name}", kept, built.problems)
            return
        self._shadow, self._shadow_name, self._shadow_problems = built, name, list(built.warnings)
        self._metrics.shadow_installed(built.revision)
        logger.info("policy: shadow set {} {} active: {} policies", name, built.revision, len(built.policies))

    def _install(self, built: PolicySet | PolicySetInvalid, shadow: _ShadowBuild | None, digest: str) -> bool:
        """Make a built set active, or keep the last good one and report why not; then the same for the shadow."""
        self._attempted_digest = digest
        self._install_shadow(shadow)
        if isinstance(built, PolicySet) and (refusal := self._settings_dropped(built)) is not None:
            built = PolicySetInvalid([*built.warnings, refusal])
        if isinstance(built, PolicySetInvalid):
            self._last_problems = built.problems
            self._metrics.reload_failed()
            kept = f"keeping revision {self.revision}" if self._active is not None else "no policy set is active"
            _log_rejection(f"policy set in {self.source_name}", kept, built.problems)
            return False
        new_set = built
        previous = self.revision
        self._active = new_set
        self._active_since = self._clock.now().timestamp()
        self._last_problems = list(new_set.warnings)
        self._metrics.reloaded(new_set.revision, previous, at=self._active_since)
        for warning in new_set.warnings:
            logger.warning("policy: {}", warning)
        logger.info(
            "policy set {} active: {} policies, {} rules from {}",
            new_set.revision,
            len(new_set.policies),
            new_set.rule_count,
            self.source_name,
        )
        return True

    def _settings_dropped(self, new_set: PolicySet) -> Problem | None:
        """A reload must not lose the PolicySettings document: every setting would silently fall back to the
        built-in defaults (trust-domain aliases, duration ceiling, key defaults, node accounts...), and those can
        be looser than what the operator configured. Starting without one is allowed (with a warning)."""
        active = self._active
        if active is None or not active.has_settings_document or new_set.has_settings_document:
            return None
        return Problem(
            self.source_name,
            1 if self._directory is not None else 0,
            1 if self._directory is not None else 0,
            "",
            f"the new set has no PolicySettings document but the active one has ({active.settings.source}); "
            "refusing to fall back to the built-in defaults: restore the PolicySettings document (a server "
            "started without one uses the defaults)",
        )

    def decide(
        self, caller: Caller, request: IssuanceRequest, *, now: datetime, ca_not_after: datetime | None
    ) -> Decision:
        started = time.perf_counter()
        active = self._active
        if active is None:
            decision = deny(Outcome.UNAVAILABLE, "POLICY_SET_UNAVAILABLE", "no valid policy set is loaded; retry later")
        else:
            try:
                decision = evaluate(
                    active, caller, request, now=now, ca_not_after=ca_not_after, namespace_labels=self._namespace_labels
                )
            except Exception:  # an engine bug or a failing label provider: refuse (retryable), never allow
                logger.exception(
                    "policy: evaluation failed for {}/{} (policy set {})",
                    caller.namespace,
                    caller.service_account,
                    active.revision,
                )
                message = "the policy engine failed on this request; retry"
                decision = deny(Outcome.UNAVAILABLE, "EVALUATION_ERROR", message, revision=active.revision)
        elapsed = time.perf_counter() - started
        if self._shadow is not None and self._shadow_name is not None:
            decision = self._with_shadow(decision, self._shadow, self._shadow_name, caller, request, now, ca_not_after)
        rule = matched_rule(decision) or ""
        policy_name, _, rule_name = rule.partition("/")
        mode = self._mode_of(active, policy_name) if rule else ""
        if rule and active is not None and active.objects and (ref := active.object_of(policy_name)) is not None:
            decision = decision.with_details(policyObject=ref.record())
        self._metrics.observe_decision(decision, elapsed, policy=policy_name, rule=rule_name, mode=mode)
        if decision.details.get("alert"):
            logger.error("policy: ALERT {}: {}", decision.reason, decision.message)
        if decision.allowed:
            return decision
        return decision.with_details(clientMessage=self.client_message(decision))

    def _with_shadow(
        self,
        decision: Decision,
        shadow_set: PolicySet,
        name: str,
        caller: Caller,
        request: IssuanceRequest,
        now: datetime,
        ca_not_after: datetime | None,
    ) -> Decision:
        """The enforced ``decision`` with what the shadow set would have decided; never changes the answer."""
        try:
            shadow = evaluate(
                shadow_set, caller, request, now=now, ca_not_after=ca_not_after, namespace_labels=self._namespace_labels
            )
            report = shadow_report(name, decision, shadow)
        except Exception as exc:  # a shadow failure must not touch the enforced answer
            logger.exception("policy: shadow set {} failed for {}/{}", name, caller.namespace, caller.service_account)
            report = shadow_error_report(name, shadow_set.revision, repr(exc))
        self._metrics.observe_shadow(decision.verdict.value, report["decision"] or "Error", report["difference"])
        return decision.with_details(shadow=report)

    def client_message(self, decision: Decision) -> str:
        """The gRPC status message for ``decision`` as settings.clientMessages asks (Detailed or Minimal)."""
        active = self._active
        return client_message(decision, minimal=active is not None and active.settings.client_messages == "Minimal")

    def explain(
        self, caller: Caller, request: IssuanceRequest, *, now: datetime, ca_not_after: datetime | None
    ) -> Explanation | None:
        """The full trace for a request, or None when no set is active."""
        active = self._active
        if active is None:
            return None
        return explain(
            active, caller, request, now=now, ca_not_after=ca_not_after, namespace_labels=self._namespace_labels
        )

    @staticmethod
    def _mode_of(active: PolicySet | None, policy_name: str) -> str:
        if policy_name == "builtin":
            return "builtin"
        policy = active.policy_named(policy_name) if active is not None else None
        return policy.mode.value if policy is not None else ""

    def status(self) -> dict[str, Any]:
        """A status document for /debug/policyz: readiness, active revision, last errors."""
        active = self._active
        errors = [str(p) for p in self._last_problems if p.severity is Severity.ERROR]
        return {
            "ready": active is not None,
            "source": "directory" if self._directory is not None else "kubernetes",
            "directory": str(self._directory) if self._directory is not None else None,
            "revision": self.revision,
            "gitSha": active.settings.git_sha if active is not None else None,
            "activeSince": self._active_since,
            "policies": [
                {"name": p.name, "mode": p.mode.value, "priority": p.priority, "rules": [r.name for r in p.rules]}
                for p in (active.policies if active is not None else ())
            ],
            "degraded": bool(errors),
            "errors": errors,
            "warnings": [str(p) for p in self._last_problems if p.severity is Severity.WARNING],
            "shadow": self._shadow_status(),
        }

    def _shadow_status(self) -> dict[str, Any] | None:
        if self._shadow_name is None:
            return None
        shadow = self._shadow
        return {
            "name": self._shadow_name,
            "directory": str(self._directory / self._shadow_name) if self._directory is not None else None,
            "ready": shadow is not None,
            "revision": shadow.revision if shadow is not None else None,
            "errors": [str(p) for p in self._shadow_problems if p.severity is Severity.ERROR],
            "warnings": [str(p) for p in self._shadow_problems if p.severity is Severity.WARNING],
        }

    async def watch(self, stop_event: asyncio.Event) -> None:
        """Reload a changed directory once the change is stable, until ``stop_event`` is set.

        Building the new set (parse, validate, compile: hundreds of milliseconds for a large set) runs in a worker
        thread; only the swap runs on the event loop, so requests keep being served meanwhile. A content that
        already failed is not rebuilt until it changes again.
        """
        if self._directory is None:
            raise RuntimeError("a store of Kubernetes objects is fed by the policy objects' watch, not watch()")
        directory = self._directory
        changes = stable_changes(
            directory,
            clock=self._clock,
            stop=stop_event,
            known_digest=self._attempted_digest,
            poll_interval=self._poll_interval,
            debounce=self._debounce,
        )
        async for snapshot in changes:
            if snapshot.digest != self._attempted_digest:
                built, shadow = await asyncio.to_thread(self._build_both, snapshot, directory)
                self._install(built, shadow, snapshot.digest)
