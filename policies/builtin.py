"""The built-in rule used without ``--policy-dir``: istio-csr's behaviour.

A caller gets exactly its own SPIFFE ID, no DNS names, ECDSA P-256/P-384 or RSA ≥ 2048 keys, the usages
istio-csr allows, and ``min(requested, max)`` as lifetime. A non-positive request gets the maximum (istio-csr
would pass 0 through to the issuer; we choose the documented ceiling instead). notAfter never passes the CA's,
and with less than a second of CA validity left the request is refused, exactly as the YAML engine does.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from policies.ca_validity import cap_to_ca
from policies.decider import Caller, Decision, IssuanceRequest, Outcome, Verdict, deny
from policies.precheck import PrecheckSettings, precheck

ALLOWED_KEYS = frozenset({"ECDSA-P256", "ECDSA-P384", "RSA-2048", "RSA-3072", "RSA-4096"})
ALLOWED_USAGES = frozenset({"digitalSignature", "keyEncipherment", "serverAuth", "clientAuth"})
RULE_NAME = "builtin/own-identity"


class OwnIdentityOnly:
    """istio-csr compatible decider: ``min(requested, max_duration)``, own identity only."""

    def __init__(self, trust_domain: str, max_duration_seconds: int) -> None:
        if max_duration_seconds <= 0:
            raise ValueError("max duration must be positive")
        self._settings = PrecheckSettings(primary_trust_domain=trust_domain)
        self._max = max_duration_seconds

    @property
    def ready(self) -> bool:
        return True

    @property
    def revision(self) -> str | None:
        return "builtin"

    def decide(
        self, caller: Caller, request: IssuanceRequest, *, now: datetime, ca_not_after: datetime | None
    ) -> Decision:
        checked = precheck(caller, request, self._settings)
        if isinstance(checked, Decision):
            return checked
        own = caller.spiffe_id
        for spiffe_id in checked:
            if str(spiffe_id) != own:
                return deny(
                    Outcome.PERMISSION_DENIED,
                    "IDENTITY_NOT_ALLOWED",
                    f"{spiffe_id} is not the caller's own identity {own}",
                )
        if request.dns_names:
            return deny(Outcome.INVALID_ARGUMENT, "DNS_NAME_NOT_ALLOWED", "DNS SANs are not allowed")
        if request.key not in ALLOWED_KEYS:
            return deny(Outcome.INVALID_ARGUMENT, "KEY_NOT_ALLOWED", f"key {request.key} is not allowed")
        extra_usages = sorted(set(request.usages) - ALLOWED_USAGES)
        if extra_usages:
            return deny(Outcome.INVALID_ARGUMENT, "USAGE_NOT_ALLOWED", f"usage {extra_usages[0]} is not allowed")

        flags: list[str] = []
        requested = request.validity_seconds
        if requested <= 0:
            duration = self._max
            flags.append("DURATION_DEFAULTED")
        elif requested > self._max:
            duration = self._max
            flags.append("DURATION_CLAMPED")
        else:
            duration = requested
        not_after = now + timedelta(seconds=duration)
        if ca_not_after is not None and not_after > ca_not_after:
            capped = cap_to_ca(now, ca_not_after, duration)
            if isinstance(capped, Decision):
                return capped
            duration, not_after = capped, now + timedelta(seconds=capped)
            flags.append("NOT_AFTER_CAPPED_BY_CA")
        return Decision(
            verdict=Verdict.ALLOW,
            outcome=Outcome.OK,
            reason="GRANTED",
            message=f"granted by {RULE_NAME}",
            uris=(own,),
            duration_seconds=duration,
            not_after=not_after,
            granted_by=RULE_NAME,
            flags=tuple(flags),
            policy_set_revision=self.revision,
        )
