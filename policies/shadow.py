"""The shadow policy set (``settings.shadowPolicySet``): a whole second set decided on every request, without effect.

Where it lives: the set named ``shadow-v2`` is the directory ``<policy dir>/shadow-v2/``, a complete set of its own
(its own PolicySettings, or the built-in defaults), loaded by the same all-or-nothing compiler with its own last
good set. With the Kubernetes source, the IdentityPolicy objects labelled ``meshsigner.io/policy-set: shadow-v2``
(``object_documents.py``), decided with the enforced settings minus ``shadowPolicySet``. What it reports: the
decision it would have made and how that differs from the enforced one, in the decision record (``shadow``) and in
``policy_shadow_decisions_total{enforced,shadow,difference}``.
"""

from __future__ import annotations

import enum
from typing import Any

from policies.decider import Decision, matched_rule


class Difference(enum.StrEnum):
    SAME = "SAME"  # same verdict, reason, rule and duration
    WOULD_DENY = "WOULD_DENY"  # enforced allows, the shadow set would deny
    WOULD_ALLOW = "WOULD_ALLOW"  # enforced denies, the shadow set would allow
    WOULD_SHORTEN = "WOULD_SHORTEN"  # both allow, the shadow set would issue a shorter certificate
    WOULD_LENGTHEN = "WOULD_LENGTHEN"
    OTHER_RULE = "OTHER_RULE"  # both allow the same duration, through another rule
    OTHER_REASON = "OTHER_REASON"  # both deny, for another reason or rule
    SHADOW_ERROR = "SHADOW_ERROR"  # the shadow evaluation failed (an engine bug): nothing to compare


def difference(enforced: Decision, shadow: Decision) -> Difference:
    if enforced.allowed != shadow.allowed:
        return Difference.WOULD_DENY if enforced.allowed else Difference.WOULD_ALLOW
    if enforced.allowed:
        assert enforced.duration_seconds is not None and shadow.duration_seconds is not None
        if shadow.duration_seconds < enforced.duration_seconds:
            return Difference.WOULD_SHORTEN
        if shadow.duration_seconds > enforced.duration_seconds:
            return Difference.WOULD_LENGTHEN
        return Difference.SAME if shadow.granted_by == enforced.granted_by else Difference.OTHER_RULE
    same = (shadow.reason, matched_rule(shadow)) == (enforced.reason, matched_rule(enforced))
    return Difference.SAME if same else Difference.OTHER_REASON


def shadow_report(name: str, enforced: Decision, shadow: Decision) -> dict[str, Any]:
    """What the decision record carries under ``shadow``."""
    return {
        "policySet": name,
        "policySetRevision": shadow.policy_set_revision,
        "decision": shadow.verdict.value,
        "reason": shadow.reason,
        "matched": matched_rule(shadow),
        "durationSeconds": shadow.duration_seconds,
        "message": shadow.message,
        "difference": difference(enforced, shadow).value,
    }


def shadow_error_report(name: str, revision: str, error: str) -> dict[str, Any]:
    return {
        "policySet": name,
        "policySetRevision": revision,
        "decision": None,
        "reason": "EVALUATION_ERROR",
        "message": error,
        "difference": Difference.SHADOW_ERROR.value,
    }
