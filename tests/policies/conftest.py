"""Shared inputs for the policy tests: the §2.1 set, the §4 clock and CA, and request builders."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from policies.decider import Caller, IssuanceRequest
from policies.loader import build_policy_set, load_policy_set
from policies.policy_set import PolicySet

FIXTURES = Path(__file__).parent / "fixtures"
SECTION_2_1 = FIXTURES / "policies"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
CA_NOT_AFTER = datetime(2026, 7, 1, tzinfo=UTC)
TD = "cluster.local"

SETTINGS = """
apiVersion: meshsigner.io/v1alpha1
kind: PolicySettings
metadata: {name: settings}
spec:
  trustDomain: cluster.local
  trustDomainAliases: [old.local]
  trustedNamespaceLabelKeys: [mesh.example.org/tier]
  impersonation: {nodeServiceAccounts: [istio-system/ztunnel]}
"""


# A valid policy on its own: a Deny rule freezing namespace orders (added to the §2.1 set by reload tests).
DENY_ORDERS = """apiVersion: meshsigner.io/v1alpha1
kind: IdentityPolicy
metadata: {name: freeze-orders}
spec:
  subjects: {namespaces: [orders]}
  rules:
    - {name: freeze, effect: Deny, message: orders is frozen}
"""


def caller(
    namespace: str = "orders",
    service_account: str = "web",
    *,
    pod_name: str | None = None,
    pod_uid: str | None = None,
    node_principal: str | None = None,
) -> Caller:
    return Caller(TD, namespace, service_account, pod_name, pod_uid, node_principal)


def own_id(namespace: str = "orders", service_account: str = "web") -> str:
    return f"spiffe://{TD}/ns/{namespace}/sa/{service_account}"


def request(*uris: str, dns: tuple[str, ...] = (), validity: int = 3600, key: str = "ECDSA-P256") -> IssuanceRequest:
    return IssuanceRequest(uris=uris, dns_names=dns, validity_seconds=validity, key=key)


def policy(name: str, body: str) -> str:
    """An IdentityPolicy document; ``body`` is the indented YAML under ``spec:``."""
    return f"apiVersion: meshsigner.io/v1alpha1\nkind: IdentityPolicy\nmetadata: {{name: {name}}}\nspec:\n{body}"


def build(*documents: str, settings: str = SETTINGS) -> PolicySet:
    sources = [("settings.yaml", settings)] if settings else []
    sources += [(f"doc{i}.yaml", text) for i, text in enumerate(documents)]
    return build_policy_set(sources, trust_domain=TD)


@pytest.fixture(scope="session")
def reference_set() -> PolicySet:
    return load_policy_set([SECTION_2_1], trust_domain=TD)
