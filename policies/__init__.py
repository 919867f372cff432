"""The identity policy engine: which callers may hold which SPIFFE IDs, DNS names, keys and lifetimes.

The signer parses a request and authenticates the caller; an ``IdentityDecider`` answers with a ``Decision``.
Two deciders exist: ``OwnIdentityOnly`` (istio-csr's behaviour, without ``--policy-dir``) and ``PolicyStore``
(the YAML policies of a directory, hot-reloaded). Nothing here imports ``signer`` or ``bridge``; the signer
imports the names below from this package, not from the modules.

Where things live:

- ``decider``: the contract with the signer (Caller, IssuanceRequest, Decision, IdentityDecider).
- ``builtin``: the istio-csr rule. ``policy_store`` + ``directory_watch``: the YAML decider and its hot reload.
- ``yaml_source`` → ``schema_readers`` → ``document_schemas``: YAML text to checked documents, with positions.
- ``compiler``/``subject_compiler`` → ``compiled``: checked documents to the immutable set the evaluator reads;
  ``loader`` runs the whole load, ``policy_set`` indexes the result (with ``subject_index``: by the namespaces or
  service accounts subjects pin, so a decision reads only what can apply to its caller).
- ``precheck`` → ``evaluator`` (with ``rule_checks``, ``context``, ``ca_validity``): one decision;
  ``conditions``: the CEL ``when`` expressions (compiled and bounded at load, evaluated last in a rule).
- ``shadow``: the shadow policy set's report next to the enforced decision (the store evaluates it).
- ``crd_gen``: the CustomResourceDefinitions under ``crds/``, generated from ``document_schemas``.
- ``explain``, ``decision_records``, ``client_messages``, ``metrics``: what a decision reports.
- ``commands`` (``meshsigner policy lint|test|explain``), with ``policy_test_runner`` and ``expectations``.
- ``globs``, ``templates``, ``spiffe``, ``problems``: shared building blocks (durations: ``clocks.durations``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Each name is imported from its module on first use (PEP 562): `meshsigner serve` without --policy-dir needs the
# decider types and the built-in rule, not the YAML loader, compiler, explain and the policy CLI (≈ 40 % of its
# import time). Type checkers read the plain imports below. `explain` (the function) is imported from
# `policies.explain` itself: the package attribute of that name is the submodule.
if TYPE_CHECKING:
    from policies.builtin import OwnIdentityOnly
    from policies.client_messages import client_message
    from policies.commands import add_policy_commands
    from policies.decider import (
        AuditFinding,
        Caller,
        Decision,
        IdentityDecider,
        IssuanceRequest,
        Outcome,
        Verdict,
        matched_rule,
    )
    from policies.decision_records import decision_record, new_decision_id
    from policies.evaluator import evaluate
    from policies.explain import Explanation, render_text
    from policies.loader import build_policy_set, load_policy_set
    from policies.policy_set import PolicySet
    from policies.policy_store import PolicyStore
    from policies.problems import PolicySetInvalid, Problem

__all__ = [
    "AuditFinding",
    "Caller",
    "Decision",
    "Explanation",
    "IdentityDecider",
    "IssuanceRequest",
    "Outcome",
    "OwnIdentityOnly",
    "PolicySet",
    "PolicySetInvalid",
    "PolicyStore",
    "Problem",
    "Verdict",
    "add_policy_commands",
    "build_policy_set",
    "client_message",
    "decision_record",
    "evaluate",
    "load_policy_set",
    "matched_rule",
    "new_decision_id",
    "render_text",
]

_MODULE_OF: dict[str, str] = {
    "AuditFinding": "policies.decider",
    "Caller": "policies.decider",
    "Decision": "policies.decider",
    "Explanation": "policies.explain",
    "IdentityDecider": "policies.decider",
    "IssuanceRequest": "policies.decider",
    "Outcome": "policies.decider",
    "OwnIdentityOnly": "policies.builtin",
    "PolicySet": "policies.policy_set",
    "PolicySetInvalid": "policies.problems",
    "PolicyStore": "policies.policy_store",
    "Problem": "policies.problems",
    "Verdict": "policies.decider",
    "add_policy_commands": "policies.commands",
    "build_policy_set": "policies.loader",
    "client_message": "policies.client_messages",
    "decision_record": "policies.decision_records",
    "evaluate": "policies.evaluator",
    "load_policy_set": "policies.loader",
    "matched_rule": "policies.decider",
    "new_decision_id": "policies.decision_records",
    "render_text": "policies.explain",
}


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'policies' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value
