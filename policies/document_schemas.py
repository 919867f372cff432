"""The documents of ``meshsigner.io/v1alpha1``: every field of PolicySettings, IdentityPolicy and PolicyTest.

Built from the strict readers of ``schema_readers.py``; ``read_document`` picks the schema by ``kind``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from policies.schema_readers import (
    INVALID,
    Bool,
    Duration,
    Field,
    Int,
    List,
    Obj,
    Reporter,
    Spec,
    Str,
    StrMap,
    Time,
    describe_node,
)

API_VERSION = "meshsigner.io/v1alpha1"
SETTINGS_OBJECT_NAME = "settings"  # the PolicySettings singleton's name as a Kubernetes object
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_RULE_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")


NAME = Str(pattern=_NAME, pattern_hint="a Kubernetes name (lowercase letters, digits, '-' and '.')")
RULE_NAME = Str(pattern=_RULE_NAME, pattern_hint="a rule name (letters, digits, '-', '_' and '.')")
TRUST_DOMAIN = Str(pattern=_TRUST_DOMAIN, pattern_hint="a trust domain (lowercase [a-z0-9._-])", max_length=255)
NODE_ACCOUNT = Str(
    pattern=re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?"),
    pattern_hint='"namespace/serviceAccount"',
)
# A shadow set's name: a sub-directory of the policy directory (one DNS label: no path, no "..").
SET_NAME = Str(pattern=re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"), pattern_hint="a set name (one DNS label)")
STRINGS = List(Str())
NAMES_OR_GLOBS = List(Str(), non_empty=True)
MAX_RULES = 1024  # per policy

METADATA = Obj(
    {
        "name": Field(NAME, required=True),
        "namespace": Field(NAME),
        "annotations": Field(StrMap()),
        "labels": Field(StrMap()),
    }
)

DURATION_RANGE = Obj(
    {
        "default": Field(Duration()),
        "min": Field(Duration()),
        "max": Field(Duration()),
        "onExceed": Field(Str(enum=("Clamp", "Deny"))),
        "onBelow": Field(Str(enum=("Deny", "Raise"))),
    }
)
LIMIT_DURATION = Obj(
    {
        "min": Field(Duration()),
        "max": Field(Duration()),
        "onExceed": Field(Str(enum=("Clamp", "Deny"))),
        "onBelow": Field(Str(enum=("Deny", "Raise"))),
    }
)
KEY = Obj({"algorithms": Field(List(Str(), non_empty=True)), "minRSABits": Field(Int(minimum=1024, maximum=16384))})

SETTINGS_SPEC = Obj(
    {
        "trustDomain": Field(TRUST_DOMAIN, doc="The primary trust domain; must equal the server's."),
        "trustDomainAliases": Field(
            List(TRUST_DOMAIN, max_items=32),
            doc="Trust domains recognised but granted only by rules that opt in with trustDomains.",
        ),
        "clusterDomain": Field(
            Str(), doc="The value of the {clusterDomain} template variable (default cluster.local)."
        ),
        "defaultDecision": Field(
            Str(enum=("Deny", "IstioCompatible")),
            doc="When no rule grants: Deny, or IstioCompatible (own identity only).",
        ),
        "duration": Field(
            Obj(
                {
                    "default": Field(Duration()),
                    "min": Field(Duration()),
                    "max": Field(Duration()),
                    "nonPositive": Field(Str(enum=("UseDefault", "Deny"))),
                }
            )
        ),
        "caValidity": Field(Obj({"onExceed": Field(Str(enum=("Clamp", "Deny")))})),
        "san": Field(
            Obj(
                {
                    "maxURIs": Field(Int(minimum=1, maximum=16)),
                    "onMissingURI": Field(Str(enum=("Deny", "UseCallerIdentity"))),
                }
            )
        ),
        "impersonation": Field(Obj({"nodeServiceAccounts": Field(List(NODE_ACCOUNT))})),
        "trustedNamespaceLabelKeys": Field(
            STRINGS, doc="The only namespace label keys selectors, templates and when conditions may read."
        ),
        "clientMessages": Field(
            Str(enum=("Detailed", "Minimal")),
            doc="gRPC error text: Detailed (code, text, rule) or Minimal (code only).",
        ),
        "key": Field(KEY),
        "usages": Field(List(Str(), non_empty=True)),
        "shadowPolicySet": Field(
            SET_NAME, doc="A second set decided on every request without effect; its decisions are recorded."
        ),
    }
)

LABEL_SELECTOR = Obj(
    {
        "matchLabels": Field(StrMap()),
        "matchExpressions": Field(
            List(
                Obj(
                    {
                        "key": Field(Str(), required=True),
                        "operator": Field(Str(enum=("In", "NotIn", "Exists", "DoesNotExist")), required=True),
                        "values": Field(STRINGS),
                    }
                )
            )
        ),
    }
)

SUBJECTS = Obj(
    {
        "namespaces": Field(NAMES_OR_GLOBS),
        "notNamespaces": Field(STRINGS),
        "namespaceSelector": Field(LABEL_SELECTOR),
        "serviceAccounts": Field(NAMES_OR_GLOBS),
        "notServiceAccounts": Field(STRINGS),
        "principals": Field(NAMES_OR_GLOBS),
        "notPrincipals": Field(STRINGS),
    }
)

RULE = Obj(
    {
        "name": Field(RULE_NAME, required=True),
        "effect": Field(
            Str(enum=("Allow", "Deny")), required=True, doc="Allow grants what it lists; Deny refuses what it matches."
        ),
        "description": Field(Str()),
        "subjects": Field(
            SUBJECTS, doc="Who the policy (or rule) is about: fields AND, list entries OR, not-lists subtract."
        ),
        "identities": Field(
            List(Str(), non_empty=True),
            doc="SPIFFE ID templates such as spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}.",
        ),
        "trustDomains": Field(List(TRUST_DOMAIN, non_empty=True)),
        "dnsNames": Field(STRINGS, doc="DNS name templates; an Allow rule without it grants no DNS names."),
        "allowWildcardDNSNames": Field(Bool()),
        "allowCrossNamespace": Field(Bool()),
        "duration": Field(DURATION_RANGE),
        "key": Field(KEY),
        "usages": Field(STRINGS),
        "expiresAt": Field(Time()),
        "ticket": Field(Str()),
        "message": Field(Str()),
        "when": Field(
            List(Str(), non_empty=True), doc="CEL conditions that must all be true; one that does not evaluate denies."
        ),
    }
)

POLICY_SPEC = Obj(
    {
        "mode": Field(
            Str(enum=("Enforce", "Audit", "Disabled")), doc="Enforce, Audit (measured, never enforced) or Disabled."
        ),
        "priority": Field(
            Int(minimum=-1_000_000, maximum=1_000_000),
            doc="Higher first when choosing which granting rule reports and sets the duration.",
        ),
        "description": Field(Str()),
        "expiresAt": Field(Time()),
        "ticket": Field(Str()),
        "subjects": Field(SUBJECTS),
        "duration": Field(DURATION_RANGE),
        "rules": Field(List(RULE, max_items=MAX_RULES, key="name"), doc="Allow and Deny rules; Deny rules always win."),
        "limits": Field(
            Obj({"duration": Field(LIMIT_DURATION), "key": Field(KEY)}),
            doc="AND-ed onto every grant for these subjects, whichever policy grants.",
        ),
    }
)


@dataclass
class WorkloadRef(Spec):
    """``ns/sa`` as a string, or ``{namespace, serviceAccount}``."""

    what: str = 'a "namespace/serviceAccount" string or a mapping with namespace and serviceAccount'

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        if isinstance(node, yaml.MappingNode):
            value = Obj({"namespace": Field(NAME, True), "serviceAccount": Field(NAME, True)}).read(node, path, report)
            return value if value is INVALID else f"{value['namespace']}/{value['serviceAccount']}"
        return NODE_ACCOUNT.read(node, path, report)


@dataclass
class FindingRef(Spec):
    """An expected audit finding: ``CODE``, ``policy:CODE``, ``policy/rule:CODE`` or ``{finding, policy, rule}``."""

    what: str = "a finding code or a mapping with finding, policy and rule"

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        if isinstance(node, yaml.MappingNode):
            spec = Obj({"finding": Field(Str(), True), "policy": Field(Str()), "rule": Field(Str())})
            value = spec.read(node, path, report)
            if value is INVALID:
                return INVALID
            where = value.get("policy", "") + (f"/{value['rule']}" if "rule" in value else "")
            return f"{where}:{value['finding']}" if where else value["finding"]
        return Str().read(node, path, report)


TEST_CALLER = Obj(
    {
        "trustDomain": Field(TRUST_DOMAIN),
        "namespace": Field(NAME, required=True),
        "serviceAccount": Field(NAME, required=True),
        "podName": Field(Str()),
        "podUID": Field(Str()),
        "impersonating": Field(WorkloadRef()),
    }
)
TEST_REQUEST = Obj(
    {
        "uris": Field(STRINGS),
        "dnsNames": Field(STRINGS),
        "ipAddresses": Field(STRINGS),
        "emailAddresses": Field(STRINGS),
        "otherSANTypes": Field(STRINGS),
        "commonName": Field(Str()),
        "isCA": Field(Bool()),
        "key": Field(Str()),
        "usages": Field(STRINGS),
        "extensions": Field(STRINGS),
        "validitySeconds": Field(Int()),
    }
)
TEST_EXPECT = Obj(
    {
        "decision": Field(Str(enum=("Allow", "Deny", "ALLOW", "DENY")), required=True),
        "reason": Field(Str()),
        "reasons": Field(STRINGS),
        "subReason": Field(Str()),
        "outcome": Field(Str()),
        "matched": Field(Str()),
        "denyRules": Field(STRINGS),
        "durationSeconds": Field(Int()),
        "notAfter": Field(Time()),
        "flags": Field(STRINGS),
        "uris": Field(STRINGS),
        "dnsNames": Field(STRINGS),
        "auditFindings": Field(List(FindingRef())),
        "message": Field(Str()),
    }
)
TEST_CA = Obj({"notAfter": Field(Time(), required=True)})
TEST_SPEC = Obj(
    {
        "policies": Field(List(Str(), non_empty=True), required=True),
        "trustDomain": Field(TRUST_DOMAIN),
        "clock": Field(Time()),
        "ca": Field(TEST_CA),
        "expectLoadErrors": Field(STRINGS),
        "cases": Field(
            List(
                Obj(
                    {
                        "name": Field(Str(), required=True),
                        "clock": Field(Time()),
                        "ca": Field(TEST_CA),
                        "caller": Field(TEST_CALLER, required=True),
                        "request": Field(TEST_REQUEST),
                        "expect": Field(TEST_EXPECT, required=True),
                    }
                )
            )
        ),
    }
)


KIND_SPECS: dict[str, Spec] = {"PolicySettings": SETTINGS_SPEC, "IdentityPolicy": POLICY_SPEC, "PolicyTest": TEST_SPEC}


def read_document(node: yaml.Node, report: Reporter) -> tuple[str, dict[str, Any]] | None:
    """Check one document against the schema of its kind; returns (kind, fields) or None after reporting."""
    report.remember("", node)
    if not isinstance(node, yaml.MappingNode):
        report.error("", f"a document must be a mapping, got {describe_node(node)}", node)
        return None
    kinds = "|".join(KIND_SPECS)
    envelope = Obj(
        {
            "apiVersion": Field(Str(enum=(API_VERSION,)), required=True),
            "kind": Field(Str(enum=tuple(KIND_SPECS)), required=True),
            "metadata": Field(METADATA, required=True),
            "spec": Field(_Deferred(), required=True),
        }
    )
    # The envelope first (spec is kept as a node), then the spec against the schema of its kind.
    spec_node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "spec"), None)
    head = envelope.read(node, "", report)
    if head is INVALID:
        kind = _kind_of(node)
        known = kind is not None and kind in KIND_SPECS
        if spec_node is not None and kind is not None and known:
            KIND_SPECS[kind].read(spec_node, "spec", report)
        if not known and not report.problems:
            report.error("kind", f"must be one of {kinds}", node)
        return None
    assert spec_node is not None  # spec is a required envelope field: a valid head has one
    spec = KIND_SPECS[head["kind"]].read(spec_node, "spec", report)
    if spec is INVALID:
        return None
    return head["kind"], {"metadata": head["metadata"], "spec": spec}


def _kind_of(node: yaml.MappingNode) -> str | None:
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "kind" and isinstance(value, yaml.ScalarNode):
            return str(value.value)
    return None


class _Deferred(Spec):
    """Accepts any node; the spec is read against its kind's schema afterwards."""

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        return node
