"""Step 0 of every decision: the checks no policy can override (policy-format.md §3 step 0).

Shared by the built-in rule and the YAML engine so both refuse malformed requests the same way.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from policies.decider import Caller, Decision, IssuanceRequest, Outcome, deny
from policies.spiffe import InvalidSpiffeID, SpiffeID, parse_spiffe_id


@dataclass(frozen=True, slots=True)
class PrecheckSettings:
    primary_trust_domain: str
    trust_domain_aliases: frozenset[str] = frozenset()
    max_uris: int = 1
    stamp_caller_identity_when_missing: bool = False  # san.onMissingURI: UseCallerIdentity
    revision: str | None = None  # the policy set's revision, stamped on the decisions precheck refuses


def precheck(caller: Caller, request: IssuanceRequest, settings: PrecheckSettings) -> tuple[SpiffeID, ...] | Decision:
    """Return the parsed URI SANs the request may be evaluated with, or a DENY decision."""
    if request.impersonated_identity is not None and caller.node_principal is None:
        return deny(
            Outcome.PERMISSION_DENIED,
            "IMPERSONATION_NOT_ALLOWED",
            "caller is not a trusted node account and may not request another identity",
            revision=settings.revision,
        )
    if request.ip_addresses or request.email_addresses or request.other_san_types:  # rare: no tuple to walk
        for kind, values in (
            ("IP address", request.ip_addresses),
            ("email address", request.email_addresses),
            ("SAN of type", request.other_san_types),
        ):
            if values:
                return deny(
                    Outcome.INVALID_ARGUMENT,
                    "SAN_TYPE_NOT_ALLOWED",
                    f"{kind} {values[0]!s} not allowed",
                    revision=settings.revision,
                )
    if request.common_name is not None:
        return deny(
            Outcome.INVALID_ARGUMENT,
            "SAN_TYPE_NOT_ALLOWED",
            "a subject common name is not allowed",
            revision=settings.revision,
        )
    if request.is_ca:
        return deny(
            Outcome.INVALID_ARGUMENT,
            "CA_NOT_ALLOWED",
            "workloads may not request a CA certificate",
            revision=settings.revision,
        )
    if request.unknown_extensions:
        return deny(
            Outcome.INVALID_ARGUMENT,
            "EXTENSION_NOT_ALLOWED",
            f"extension {request.unknown_extensions[0]} not allowed (only SAN, key usage, extended key usage)",
            revision=settings.revision,
        )
    uris: Collection[str] = request.uris
    if len(uris) > settings.max_uris:
        return deny(
            Outcome.PERMISSION_DENIED,
            "TOO_MANY_URI_SANS",
            f"{len(uris)} URI SANs requested, at most {settings.max_uris} allowed",
            revision=settings.revision,
        )
    if not uris:
        if not settings.stamp_caller_identity_when_missing:
            return deny(
                Outcome.INVALID_ARGUMENT, "MISSING_URI_SAN", "the CSR has no URI SAN", revision=settings.revision
            )
        uris = (caller.spiffe_id,)
    parsed: list[SpiffeID] = []
    for index, uri in enumerate(uris):
        try:
            spiffe_id = parse_spiffe_id(uri)
        except InvalidSpiffeID as exc:
            return deny(
                Outcome.INVALID_ARGUMENT,
                "INVALID_SPIFFE_ID",
                f"uris[{index}] {uri!r}: {exc}",
                revision=settings.revision,
            )
        if (
            spiffe_id.trust_domain != settings.primary_trust_domain
            and spiffe_id.trust_domain not in settings.trust_domain_aliases
        ):
            return deny(
                Outcome.PERMISSION_DENIED,
                "TRUST_DOMAIN_NOT_ALLOWED",
                f"uris[{index}] trust domain {spiffe_id.trust_domain!r} is neither "
                f"{settings.primary_trust_domain!r} nor a configured alias",
                revision=settings.revision,
            )
        parsed.append(spiffe_id)
    return tuple(parsed)
