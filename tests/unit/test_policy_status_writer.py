"""The leader's policy status writer keeps each condition's lastTransitionTime while its status holds."""

from __future__ import annotations

from bridge.policy_status import with_transition_times


def test_a_condition_keeps_its_transition_time_until_its_status_changes() -> None:
    old = {
        "conditions": [
            {"type": "Accepted", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ]
    }
    new = {
        "observedGeneration": 2,
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Valid", "message": ""},
            {"type": "Ready", "status": "False", "reason": "SetRejected", "message": "..."},
        ],
    }
    merged = with_transition_times(old, new, "2026-06-01T12:00:00Z")
    times = {c["type"]: c["lastTransitionTime"] for c in merged["conditions"]}
    assert times == {"Accepted": "2026-01-01T00:00:00Z", "Ready": "2026-06-01T12:00:00Z"}
    assert merged["observedGeneration"] == 2
    fresh = with_transition_times({}, new, "2026-06-01T12:00:00Z")
    assert {c["lastTransitionTime"] for c in fresh["conditions"]} == {"2026-06-01T12:00:00Z"}
