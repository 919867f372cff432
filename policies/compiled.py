"""The compiled, validated form of the policy documents, as the evaluator reads them.

Everything here is immutable and already checked: inherited values are resolved (a rule's duration range
falls back to its policy's, then to the settings), templates and globs are compiled, and names are qualified
(``policy/rule``) the way reports print them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from clocks.durations import format_duration
from policies.conditions import Condition
from policies.subjects import Subjects
from policies.templates import DnsTemplate, IdentityTemplate

# Names reports use for rules that come from no IdentityPolicy: the built-in own-identity rule ("builtin/...")
# and the settings ceiling ("settings"). A policy of that name would be indistinguishable from them.
RESERVED_POLICY_NAMES = frozenset({"builtin", "settings"})
DEFAULT_KEY_ALGORITHMS = ("ECDSA-P256", "ECDSA-P384", "RSA-2048", "RSA-3072", "RSA-4096", "RSA-8192")
DEFAULT_USAGES = ("digitalSignature", "keyEncipherment", "serverAuth", "clientAuth")
KNOWN_KEY_ALGORITHMS = frozenset(
    {"ECDSA-P256", "ECDSA-P384", "ECDSA-P521", "Ed25519", "Ed448"}
    | {f"RSA-{bits}" for bits in (1024, 2048, 3072, 4096, 8192)}
)
KNOWN_USAGES = frozenset(
    {
        "digitalSignature",
        "contentCommitment",
        "keyEncipherment",
        "dataEncipherment",
        "keyAgreement",
        "certSign",
        "crlSign",
        "encipherOnly",
        "decipherOnly",
        "serverAuth",
        "clientAuth",
        "codeSigning",
        "emailProtection",
        "timeStamping",
        "OCSPSigning",
    }
)


class Mode(enum.StrEnum):
    ENFORCE = "Enforce"
    AUDIT = "Audit"
    DISABLED = "Disabled"


class Effect(enum.StrEnum):
    ALLOW = "Allow"
    DENY = "Deny"


def rsa_bits(key: str) -> int | None:
    if key.startswith("RSA-") and key[4:].isdigit():
        return int(key[4:])
    return None


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """Allowed key algorithms (``None``: any) and, for RSA, a minimum modulus size."""

    algorithms: frozenset[str] | None
    min_rsa_bits: int | None = None

    def refusal(self, key: str) -> str | None:
        """Why ``key`` is not allowed, or None when it is."""
        if self.algorithms is not None and key not in self.algorithms:
            return f"{key} is not one of [{', '.join(sorted(self.algorithms))}]"
        bits = rsa_bits(key)
        if self.min_rsa_bits is not None and bits is not None and bits < self.min_rsa_bits:
            return f"{key} is below the minimum of {self.min_rsa_bits} RSA bits"
        return None

    def describe(self) -> str:
        parts = []
        if self.algorithms is not None:
            parts.append("one of [" + ", ".join(sorted(self.algorithms)) + "]")
        if self.min_rsa_bits is not None:
            parts.append(f"RSA >= {self.min_rsa_bits} bits")
        return " and ".join(parts) or "any key"


@dataclass(frozen=True, slots=True)
class DurationRange:
    """A rule's resolved duration policy (rule, then policy, then settings)."""

    default: int
    minimum: int
    maximum: int
    on_exceed: str  # Clamp | Deny
    on_below: str  # Deny | Raise

    def describe(self) -> str:
        return (
            f"default {format_duration(self.default)}, min {format_duration(self.minimum)}, "
            f"max {format_duration(self.maximum)} (onExceed {self.on_exceed}, onBelow {self.on_below})"
        )


@dataclass(frozen=True, slots=True)
class Rule:
    policy: str
    index: int
    name: str
    effect: Effect
    subjects: Subjects | None = None
    identities: tuple[IdentityTemplate, ...] = ()
    trust_domains: frozenset[str] = frozenset()
    dns_names: tuple[DnsTemplate, ...] = ()
    allow_wildcard_dns_names: bool = False
    duration: DurationRange | None = None
    key: KeyPolicy | None = None  # Deny rules: the keys that trigger the rule
    usages: frozenset[str] = frozenset()
    expires_at: datetime | None = None
    ticket: str | None = None
    message: str | None = None
    conditions: tuple[Condition, ...] = ()  # ``when``: every one must be true
    condition_variables: frozenset[str] = frozenset()  # the variables ``conditions`` read, together
    # "policy/rule", as reports print it: built once here, since decisions name rules several times each
    qualified_name: str = field(init=False, compare=False, repr=False)
    granted_message: str = field(init=False, compare=False, repr=False)  # an ALLOW decision's message

    def __post_init__(self) -> None:
        object.__setattr__(self, "qualified_name", f"{self.policy}/{self.name}")
        object.__setattr__(self, "granted_message", f"granted by {self.policy}/{self.name}")

    def copy_for(self, policy: str, index: int) -> Rule:
        """This rule as rule ``index`` of ``policy``, with copies of its templates (each rule keeps its own render
        cache). Positional on purpose: several times cheaper than dataclasses.replace when a load reuses tens of
        thousands of rules; tests/policies/test_scale_paths.py checks that it copies every field."""
        return Rule(
            policy,
            index,
            self.name,
            self.effect,
            self.subjects,
            tuple(t.copy() for t in self.identities),
            self.trust_domains,
            tuple(t.copy() for t in self.dns_names),
            self.allow_wildcard_dns_names,
            self.duration,
            self.key,
            self.usages,
            self.expires_at,
            self.ticket,
            self.message,
            self.conditions,
            self.condition_variables,
        )

    @property
    def needs_labels(self) -> bool:
        templates: tuple[IdentityTemplate | DnsTemplate, ...] = (*self.identities, *self.dns_names)
        return (
            any(v.startswith("nsLabel:") for t in templates for v in t.variables)
            or (self.subjects is not None and self.subjects.needs_labels)
            or any(c.needs_labels for c in self.conditions)
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """``spec.limits``: AND-ed onto every grant for the policy's subjects, whichever policy grants."""

    policy: str
    duration_min: int | None = None
    duration_max: int | None = None
    on_exceed: str = "Clamp"
    on_below: str = "Deny"
    key: KeyPolicy | None = None
    name: str | None = None  # overrides "<policy>/limits", e.g. for the settings ceiling
    qualified_name: str = field(init=False, compare=False, repr=False)  # built once, like Rule's

    def __post_init__(self) -> None:
        object.__setattr__(self, "qualified_name", self.name or f"{self.policy}/limits")


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    mode: Mode
    priority: int
    subjects: Subjects
    rules: tuple[Rule, ...]
    limits: Limits | None
    expires_at: datetime | None = None
    ticket: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    source: str = ""
    # Worked out once here, read by step 1 on every decision: whether it must look at the policy again for each
    # request (an expiry or a label selector), or whether the cached subject match is the whole answer.
    checked_per_decision: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        per_decision = self.expires_at is not None or self.subjects.namespace_selector is not None
        object.__setattr__(self, "checked_per_decision", per_decision)

    @property
    def allow_rules(self) -> tuple[Rule, ...]:
        """Read when a policy set indexes the policy for a caller (cached there), not per decision."""
        return tuple(r for r in self.rules if r.effect is Effect.ALLOW)

    @property
    def deny_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.effect is Effect.DENY)

    @property
    def needs_labels(self) -> bool:
        return self.subjects.needs_labels or any(r.needs_labels for r in self.rules)

    @property
    def order(self) -> tuple[int, str]:
        """Step 4's tie-break: highest priority first, then the smallest name."""
        return -self.priority, self.name


@dataclass(frozen=True, slots=True)
class PolicySettings:
    trust_domain: str = "cluster.local"
    trust_domain_aliases: frozenset[str] = frozenset()
    cluster_domain: str = "cluster.local"
    default_decision: str = "Deny"  # Deny | IstioCompatible
    duration_default: int = 86400
    duration_min: int = 0
    duration_max: int = 7 * 86400
    non_positive: str = "UseDefault"  # UseDefault | Deny
    ca_on_exceed: str = "Clamp"  # Clamp | Deny
    max_uris: int = 1
    on_missing_uri: str = "Deny"  # Deny | UseCallerIdentity
    node_service_accounts: frozenset[str] = frozenset()
    trusted_namespace_label_keys: frozenset[str] = frozenset()
    client_messages: str = "Detailed"  # Detailed | Minimal
    key: KeyPolicy = KeyPolicy(frozenset(DEFAULT_KEY_ALGORITHMS))
    usages: frozenset[str] = frozenset(DEFAULT_USAGES)
    git_sha: str | None = None
    source: str = ""
    shadow_policy_set: str | None = None  # the shadow set: a sub-directory, or the objects labelled with its name


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The Kubernetes object a policy or the settings were read from (the ``kubernetes`` policy source)."""

    kind: str
    namespace: str | None  # None: cluster-scoped (PolicySettings)
    name: str
    generation: int | None
    resource_version: str
    uid: str = ""  # tells an object from one deleted and created again under the same name

    @property
    def label(self) -> str:
        """How reports name the object: ``IdentityPolicy payments/team-grants``, ``PolicySettings settings``."""
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    def record(self) -> dict[str, object]:
        """The decision record's ``policyObject``."""
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "generation": self.generation,
            "resourceVersion": self.resource_version,
        }
