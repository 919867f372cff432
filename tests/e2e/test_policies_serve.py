"""The YAML policy engine behind a real ``serve`` process: grants, denials, clamps, audit records, hot reload."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from proto import istio_ca_pb2_grpc
from tests.e2e.calls import create
from tests.support.csr_builder import make_csr
from tests.support.decision_records import DecisionRecords
from tests.support.processes import ServerProcess, local_signer_flags, readyz, start_server
from tests.support.tokens import TokenIssuer
from tests.support.waiting import wait_for

POLICIES = Path(__file__).resolve().parents[1] / "policies" / "fixtures" / "policies"


def _flags(base: Path, token_issuer: TokenIssuer, policy_dir: Path) -> list[str]:
    return [
        *local_signer_flags(base, token_issuer),
        f"--policy-dir={policy_dir}",
        f"--decision-log={base / 'decisions.jsonl'}",
        "--log-format=json",
    ]


def _stub(server: ServerProcess, base: Path) -> istio_ca_pb2_grpc.IstioCertificateServiceStub:
    return server.stub((base / "ca" / "root-cert.pem").read_bytes())


def _records(base: Path) -> DecisionRecords:
    return DecisionRecords(base / "decisions.jsonl")


def _listening(server: ServerProcess) -> bool:
    try:
        return "not listening" not in readyz(server.readiness_port)[1]
    except OSError:
        return False


def _lifetime(chain: list[str]) -> float:
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    return (leaf.not_valid_after_utc - datetime.now(UTC)).total_seconds()


@pytest.fixture(scope="module")
def policy_server(
    tmp_path_factory: pytest.TempPathFactory, token_issuer: TokenIssuer
) -> Iterator[tuple[ServerProcess, Path, Path]]:
    base = tmp_path_factory.mktemp("policy-serve")
    policy_dir = base / "policies"
    shutil.copytree(POLICIES, policy_dir)
    server = start_server(_flags(base, token_issuer, policy_dir), base / "serve.log")
    yield server, base, policy_dir
    server.stop()


def test_team_policy_grants_dns_names(policy_server, token_issuer):
    server, base, _ = policy_server
    own = "spiffe://cluster.local/ns/payments/sa/api"
    csr = make_csr([own], dns=["api.payments.svc"])
    before = _records(base).count()
    code, chain, _ = create(_stub(server, base), csr, token_issuer.token("payments", "api"), validity=43200)
    assert code is grpc.StatusCode.OK
    san = x509.load_pem_x509_certificate(chain[0].encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["api.payments.svc"]
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [own]
    assert 43200 - 30 < _lifetime(chain) <= 43200
    assert _records(base).after(before)["matched"] == "payments-services/service-dns"


def test_compliance_deny_overrides_the_baseline(policy_server, token_issuer):
    server, base, _ = policy_server
    csr = make_csr(["spiffe://cluster.local/ns/prod-checkout/sa/default"])
    before = _records(base).count()
    code, chain, details = create(_stub(server, base), csr, token_issuer.token("prod-checkout", "default"))
    assert (code, chain) == (grpc.StatusCode.PERMISSION_DENIED, [])
    assert "DENIED_BY_RULE" in details and "compliance-denies/no-default-sa-in-prod" in details
    record = _records(base).after(before)
    assert record["decision"] == "Deny" and record["reason"] == "DENIED_BY_RULE"


def test_long_request_is_clamped_and_audit_finding_recorded(policy_server, token_issuer):
    server, base, _ = policy_server
    finding = 'policy_audit_findings_total{finding="AUDIT_WOULD_CLAMP",policy="tighten-to-12h",rule="limits"}'
    findings_before = server.metric(finding)
    csr = make_csr(["spiffe://cluster.local/ns/orders/sa/web"])
    before = _records(base).count()
    code, chain, _ = create(_stub(server, base), csr, token_issuer.token("orders", "web"), validity=604800)
    assert code is grpc.StatusCode.OK
    assert 86400 - 30 < _lifetime(chain) <= 86400
    record = _records(base).after(before)
    assert "DURATION_CLAMPED" in record["reasons"]
    assert any(f["finding"] == "AUDIT_WOULD_CLAMP" and f["policy"] == "tighten-to-12h" for f in record["auditFindings"])
    assert server.metric(finding) == findings_before + 1


def test_bad_reload_keeps_the_last_good_set(policy_server, token_issuer):
    server, base, policy_dir = policy_server
    (policy_dir / "zz-broken.yaml").write_text("apiVersion: meshsigner.io/v1alpha1\nkind: IdentityPolicy\nspec: [\n")
    wait_for(lambda: 'policy_reload_total{result="error"} 1.0' in server.metrics(), "the broken file attempted")
    csr = make_csr(["spiffe://cluster.local/ns/orders/sa/web"])
    code, _, _ = create(_stub(server, base), csr, token_issuer.token("orders", "web"))
    assert code is grpc.StatusCode.OK, "the last good set still decides"
    assert readyz(server.readiness_port)[0] == 200
    (policy_dir / "zz-broken.yaml").unlink()


def test_no_valid_set_at_start_means_not_ready_and_unavailable(tmp_path, token_issuer):
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / "broken.yaml").write_text("kind: IdentityPolicy\nspec: {mode: Sometimes}\n")
    server = start_server(_flags(tmp_path, token_issuer, policy_dir), tmp_path / "serve.log", wait=False)
    try:
        # the probe starts before the gRPC listener: wait until only the policy set is missing
        wait_for(lambda: _listening(server), "serve listening")
        status, body = readyz(server.readiness_port)
        assert status == 503 and "policy" in body
        code, chain, details = create(
            _stub(server, tmp_path), make_csr(["spiffe://cluster.local/ns/orders/sa/web"]), token_issuer.token()
        )
        assert (code, chain) == (grpc.StatusCode.UNAVAILABLE, [])
        assert "POLICY_SET_UNAVAILABLE" in details
    finally:
        server.stop()
