"""The gRPC status message a refused caller reads (policy-format.md §3 "Outputs").

Detailed messages name the reason, the rule and the policy-set revision so a workload owner can find the cause;
``settings.clientMessages: Minimal`` keeps only the reason code for clusters that must not reveal policy names.
"""

from __future__ import annotations

from policies.decider import Decision, matched_rule


def client_message(decision: Decision, *, minimal: bool = False) -> str:
    """The gRPC status message: ``denied: <CODE>: <text> [<policy>/<rule>] (policy set <rev>)``.

    ``minimal`` (settings.clientMessages: Minimal) keeps only ``denied: <CODE>``.
    """
    if decision.allowed:
        return "granted"
    if minimal:
        return f"denied: {decision.reason}"
    rule = matched_rule(decision)
    where = f" [{rule}]" if rule else ""
    revision = decision.policy_set_revision
    version = f" (policy set {revision.removeprefix('sha256:')[:12]})" if revision else ""
    return f"denied: {decision.reason}: {decision.message}{where}{version}"
