"""The front door's side of the audit mirror: what a decision's mirror records comes only from what the front door
hands over (the CSR as received, the backend's answer), with no per-request context behind it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bridge.certificates import certificate_pem
from bridge.signing import issued_chain
from policies import Caller, Decision, IssuanceRequest, Outcome, Verdict
from signer.audit_trail import mirror_entry
from signer.decided_request import DecidedRequest
from tests.support.chain_builder import SPIFFE_ID, make_ca, make_leaf
from tests.support.csr_builder import make_csr

CALLER = Caller("cluster.local", "app", "web")
REQUEST = IssuanceRequest(uris=(SPIFFE_ID,))


def test_a_granted_mirror_names_the_csr_the_chain_and_the_object_it_was_handed():
    ca = make_ca("mirror test CA")
    leaf = make_leaf(ca)
    signed = issued_chain(leaf, [ca.certificate], certificate_pem(ca.certificate), "meshsigner-abc12")
    granted = Decision(Verdict.ALLOW, Outcome.OK, "GRANTED", uris=(SPIFFE_ID,), duration_seconds=3600,
                       not_after=datetime.now(UTC) + timedelta(hours=1), granted_by="team/web")  # fmt: skip
    csr_pem = make_csr([SPIFFE_ID])
    entry = mirror_entry(DecidedRequest("decision-7", CALLER, REQUEST, granted, csr_pem, signed))
    assert entry.decision_id == "decision-7"
    assert entry.csr_pem == csr_pem
    assert entry.chain_pem == certificate_pem(leaf) + certificate_pem(ca.certificate)
    assert entry.mirrors == "meshsigner-abc12"
    assert (entry.allowed, entry.reason, entry.rule) == (True, "GRANTED", "team/web")
    assert entry.caller == "cluster.local/ns/app/sa/web"
    assert entry.requested_identities == (SPIFFE_ID,)


def test_a_refused_mirror_carries_the_csr_and_no_chain_or_object():
    refused = Decision(Verdict.DENY, Outcome.PERMISSION_DENIED, "IDENTITY_NOT_ALLOWED", "not yours",
                       deny_rules=("tenants/no-foreign",))  # fmt: skip
    csr_pem = make_csr([SPIFFE_ID])
    entry = mirror_entry(DecidedRequest("decision-8", CALLER, REQUEST, refused, csr_pem))
    assert entry.csr_pem == csr_pem
    assert (entry.chain_pem, entry.mirrors) == ("", "")
    assert (entry.allowed, entry.reason, entry.rule, entry.message) == (
        False,
        "IDENTITY_NOT_ALLOWED",
        "tenants/no-foreign",
        "not yours",
    )
