"""Step 6 of policy-format.md §3, shared by the YAML engine and the built-in istio-csr rule: a certificate never
outlives the CA that signs it.

Callers compute ``now + duration`` themselves and call ``cap_to_ca`` only when that passes the CA's notAfter (the
common case costs no call). The capped lifetime is whole seconds, so the issued notAfter is never after the CA's.
"""

from __future__ import annotations

from datetime import datetime

from clocks.durations import format_duration
from policies.decider import Decision, Outcome, deny

REASON = "CA_VALIDITY_INSUFFICIENT"


def cap_to_ca(
    now: datetime,
    ca_not_after: datetime,
    duration: int,
    *,
    minimum: int = 0,
    on_exceed: str = "Clamp",
    revision: str | None = None,
) -> int | Decision:
    """The lifetime left before ``ca_not_after`` in whole seconds, when ``now + duration`` passes it; or why the
    request cannot be served (UNAVAILABLE: rotating the CA fixes it).

    Refused when less than one second is left (a zero-lifetime certificate is no certificate), when
    ``on_exceed`` is ``Deny``, or when what is left is below ``minimum`` (the effective minimum lifetime).
    """
    remaining = int((ca_not_after - now).total_seconds())
    if remaining < 1:
        expired = ca_not_after <= now
        message = "the signing CA has expired" if expired else "the signing CA expires in less than 1s"
        return deny(Outcome.UNAVAILABLE, REASON, message, revision=revision, alert=True)
    if on_exceed == "Deny":
        return deny(
            Outcome.UNAVAILABLE,
            REASON,
            f"{format_duration(duration)} would outlive the CA ({format_duration(remaining)} left; "
            "settings.caValidity.onExceed: Deny)",
            revision=revision,
        )
    if remaining < minimum:
        return deny(
            Outcome.UNAVAILABLE,
            REASON,
            f"the CA has {format_duration(remaining)} left, below the minimum {format_duration(minimum)}",
            revision=revision,
            alert=True,
        )
    return remaining
