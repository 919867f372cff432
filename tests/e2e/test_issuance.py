"""Issuance through a real ``meshsigner serve`` process over gRPC + TLS, as Istio's agents call it."""

from __future__ import annotations

import asyncio
import os
import stat
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proto import istio_ca_pb2, istio_ca_pb2_grpc
from tests.e2e.calls import create
from tests.support.csr_builder import key, make_csr
from tests.support.decision_records import DecisionRecords
from tests.support.waiting import wait_for

OWN = "spiffe://cluster.local/ns/orders/sa/web"


def _leaf(chain: list[str]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(chain[0].encode())


def _lifetime(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - datetime.now(UTC)).total_seconds()


@pytest.mark.parametrize(("algorithm", "key_kind"), [("ES256", "p256"), ("RS256", "rsa2048"), ("ES256", "p384")])
def test_agent_gets_a_correct_chain(signer, algorithm, key_kind):
    csr = make_csr([OWN], key_kind=key_kind)
    code, chain, _ = create(signer.stub(), csr, signer.issuer.token(algorithm=algorithm))
    assert code is grpc.StatusCode.OK
    assert len(chain) == 2, "leaf, then the root bundle as the last element"
    leaf = _leaf(chain)
    root = x509.load_pem_x509_certificate(chain[-1].encode())
    assert chain[-1].encode() == signer.root_pem
    leaf.verify_directly_issued_by(root)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.UniformResourceIdentifier) == [OWN]
    assert not san.value.get_values_for_type(x509.DNSName)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    eku = list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert leaf.public_key().public_bytes(serialization.Encoding.DER, spki) == key(key_kind).public_key().public_bytes(
        serialization.Encoding.DER, spki
    )
    assert leaf.subject == x509.Name([])
    assert leaf.not_valid_before_utc < datetime.now(UTC) - timedelta(seconds=60), "notBefore is back-dated"
    # the agent asks 24h; the default --max-client-certificate-duration (1h) clamps it
    assert 3500 < _lifetime(leaf) <= 3600


@pytest.mark.parametrize(("requested", "expected"), [(600, 600), (0, 3600), (-5, 3600), (2**63 - 1, 3600)])
def test_lifetime_is_min_of_requested_and_maximum(signer, requested, expected):
    code, chain, _ = create(signer.stub(), make_csr([OWN]), signer.issuer.token(), validity=requested)
    assert code is grpc.StatusCode.OK
    assert expected - 30 < _lifetime(_leaf(chain)) <= expected


def test_ztunnel_shaped_csr_is_accepted(signer):
    """Empty subject and a non-critical SAN (rcgen's default), no clusterid header."""
    csr = make_csr([OWN], subject=x509.Name([]), san_critical=False)
    code, chain, _ = create(signer.stub(), csr, signer.issuer.token(), cluster_id=None, metadata_fields={})
    assert code is grpc.StatusCode.OK and len(chain) == 2


def test_health_service_reports_serving(signer):
    stub = health_pb2_grpc.HealthStub(signer.channel())
    for service in ("", "istio.v1.auth.IstioCertificateService"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_server_name_is_verified(signer):
    stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(signer.channel(server_name="impostor.example"))
    code, chain, _ = create(stub, make_csr([OWN]), signer.issuer.token())
    assert code is grpc.StatusCode.UNAVAILABLE and not chain


def test_ca_key_is_private(signer):
    assert stat.S_IMODE(os.stat(signer.ca_dir / "ca-key.pem").st_mode) == 0o600


def test_concurrent_burst_all_issued(signer):
    async def burst() -> list[grpc.StatusCode]:
        channel = grpc.aio.secure_channel(
            signer.server.address,
            grpc.ssl_channel_credentials(root_certificates=signer.root_pem),
            options=[("grpc.ssl_target_name_override", "cert-manager-istio-csr.cert-manager.svc")],
        )
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel)
        identities = [(f"ns{i % 10}", f"sa{i % 7}") for i in range(200)]
        requests = []
        for namespace, account in identities:
            token = signer.issuer.token(namespace, account)
            csr = make_csr([f"spiffe://cluster.local/ns/{namespace}/sa/{account}"])
            requests.append((token, csr, f"spiffe://cluster.local/ns/{namespace}/sa/{account}"))
        limit = asyncio.Semaphore(32)

        async def one(token: str, csr: str, expected: str) -> grpc.StatusCode:
            async with limit:
                response = await stub.CreateCertificate(
                    istio_ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=3600),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=30,
                )
            leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
            uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [expected]
            return grpc.StatusCode.OK

        try:
            return await asyncio.gather(*(one(*r) for r in requests))
        finally:
            await channel.close()

    codes = asyncio.run(burst())
    assert codes == [grpc.StatusCode.OK] * 200


def test_decision_records_and_metrics(signer):
    records = DecisionRecords(signer.ca_dir.parent / "decisions.jsonl")
    before = records.count()
    code, chain, _ = create(signer.stub(), make_csr([OWN]), signer.issuer.token())
    assert code is grpc.StatusCode.OK
    # Records of earlier tests' calls may still be on their way (the writer collects them in windows): this
    # call's record is the one issuing its identity with its certificate's notAfter.
    issued = {"uris": [OWN], "notAfter": x509.load_pem_x509_certificate(chain[0].encode()).not_valid_after_utc}

    def this_call() -> dict | None:
        wanted = {"uris": issued["uris"], "notAfter": issued["notAfter"].isoformat()}
        return next(
            (r for r in records.all()[before:] if {k: (r.get("issued") or {}).get(k) for k in wanted} == wanted),
            None,
        )

    wait_for(lambda: this_call() is not None, "the decision record of the call")
    granted = this_call()
    assert granted is not None
    assert granted["decision"] == "Allow" and granted["request"]["uris"] == [OWN]
    assert granted["grantedBy"] == "builtin/own-identity"
    assert granted["caller"]["principal"] == "cluster.local/ns/orders/sa/web"
    assert granted["issued"]["uris"] == [OWN] and granted["issued"]["notAfter"]
    metrics = signer.server.metrics()
    assert 'meshsigner_csr_requests_total{code="OK",reason="ISSUED"}' in metrics
    # with the default 1h maximum, no issued lifetime may land above the 3600 s bucket
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("issued_certificate"))
    issued = float(values["issued_certificate_duration_seconds_count"])
    assert issued > 0 and float(values['issued_certificate_duration_seconds_bucket{le="3600.0"}']) == issued
