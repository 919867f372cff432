"""The chart's Kubernetes CSR API features (docs/kubernetes-csr-mode.md): ``app.signer: kubernetes-csr`` and the
audit mirror become meshsigner's flags, what meshsigner would refuse at start is refused at install with a message,
and each feature grants exactly the rules its start-up permission check asks for (each toggle removes exactly its
own)."""

from __future__ import annotations

import pytest

from signer.settings import parse_serve_args
from tests.helm.test_chart import container_args, render
from tests.helm.test_chart_features import render_error, rules

SIGNER = "clusterissuers.cert-manager.io/istio-ca"
CSR_MODE = ("app.signer=kubernetes-csr", f"app.signerName={SIGNER}", "app.tls.rootCAFile=/var/run/roots/ca.pem")
GROUP = "certificates.k8s.io"
CSRS = "certificatesigningrequests"
SELF_REVIEW = {("ClusterRole", "authorization.k8s.io", "selfsubjectaccessreviews", "create", "*")}
CSR_LIFE = {("ClusterRole", GROUP, CSRS, verb, "*") for verb in ("create", "get", "list", "watch")}
CSR_DELETE = {("ClusterRole", GROUP, CSRS, "delete", "*")}
CSR_APPROVAL = {
    ("ClusterRole", GROUP, f"{CSRS}/approval", "update", "*"),
    ("ClusterRole", GROUP, "signers", "approve", SIGNER),
}
MIRROR = (
    {("ClusterRole", GROUP, CSRS, verb, "*") for verb in ("create", "list", "watch", "delete")}
    | {("ClusterRole", GROUP, f"{CSRS}/{sub}", "update", "*") for sub in ("approval", "status")}
    | {("ClusterRole", GROUP, "signers", verb, "meshsigner.io/audit") for verb in ("approve", "sign")}
)


def test_kubernetes_csr_values_become_its_flags(helm):
    settings = parse_serve_args(container_args(render(helm, *CSR_MODE, "app.certmanager.requestTimeout=20s")))
    assert (settings.signer, settings.signer_name, settings.root_ca_file) == (
        "kubernetes-csr", SIGNER, "/var/run/roots/ca.pem"
    )  # fmt: skip
    assert settings.approve_certificate_signing_requests and not settings.preserve_certificate_signing_requests
    assert settings.certificate_request_timeout == 20
    assert not settings.mirror_certificate_signing_requests
    assert settings.cluster_duties, "the leader distributes the pinned roots"
    toggled = render(helm, *CSR_MODE, "app.approveCertificateSigningRequests=false",
                     "app.preserveCertificateSigningRequests=true")  # fmt: skip
    settings = parse_serve_args(container_args(toggled))
    assert not settings.approve_certificate_signing_requests and settings.preserve_certificate_signing_requests


def test_kubernetes_csr_renders_no_cert_manager_objects(helm):
    docs = render(helm, *CSR_MODE)
    assert not any(group == "cert-manager.io" for _, group, _, _, _ in rules(docs))
    assert not any(doc["kind"] == "Certificate" for doc in docs), "no cert-manager to keep istiod's Certificate"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("app.signer=kubernetes-csr", "app.tls.rootCAFile=/r/ca.pem"), "at '/app/signerName': minLength"),
        ((*CSR_MODE, "app.signerName=istio-ca"), "at '/app/signerName': 'istio-ca' does not match pattern"),
        ((*CSR_MODE, "app.tls.rootCAFile="), "app.signer=kubernetes-csr needs app.tls.rootCAFile (--root-ca-file)"),
        ((*CSR_MODE, "app.mirror.enabled=true"), "app.mirror.enabled is for app.signer cert-manager and local"),
        ((*CSR_MODE, "app.tls.istiodCertificateEnable=dynamic", "app.tls.istiodCertificateDuration=5m"),
         "must be at least 10m with app.signer=kubernetes-csr"),
        (("app.mirror.enabled=true", "app.mirror.signerName=audit"), "at '/app/mirror/signerName'"),
        (("app.mirror.enabled=true", "app.mirror.retention=1 hour"), "at '/app/mirror/retention'"),
    ],
)  # fmt: skip
def test_what_meshsigner_would_refuse_at_start_is_refused_with_a_message(helm, values, message):
    assert message in render_error(helm, *values)


def test_kubernetes_csr_grants_exactly_its_rules(helm):
    """Against the local signer with the same authentication and duties: only the CSR rules differ."""
    local, csr = rules(render(helm, "app.signer=local")), rules(render(helm, *CSR_MODE))
    assert csr - local == CSR_LIFE | CSR_DELETE | CSR_APPROVAL | SELF_REVIEW
    assert local - csr == set()


@pytest.mark.parametrize(
    ("toggle", "removed"),
    [
        ("app.approveCertificateSigningRequests=false", CSR_APPROVAL),
        ("app.preserveCertificateSigningRequests=true", CSR_DELETE),
    ],
)
def test_each_kubernetes_csr_toggle_removes_exactly_its_rules(helm, toggle, removed):
    on, off = rules(render(helm, *CSR_MODE)), rules(render(helm, *CSR_MODE, toggle))
    assert on - off == removed
    assert off - on == set()


def test_approval_is_granted_on_the_configured_signer_name_only(helm):
    name = "issuers.cert-manager.io/mesh.istio-ca"
    found = rules(render(helm, *CSR_MODE, f"app.signerName={name}"))
    assert {rule for rule in found if rule[2] == "signers"} == {("ClusterRole", GROUP, "signers", "approve", name)}


@pytest.mark.parametrize("signer", ["cert-manager", "local"])
def test_the_audit_mirror_adds_exactly_its_rules_and_flags(helm, signer):
    off, on = (render(helm, f"app.signer={signer}", f"app.mirror.enabled={enabled}") for enabled in ("false", "true"))
    assert rules(on) - rules(off) == MIRROR | SELF_REVIEW
    assert rules(off) - rules(on) == set()
    settings = parse_serve_args(container_args(on))
    assert settings.mirror_certificate_signing_requests
    assert (settings.mirror_signer_name, settings.mirror_retention) == ("meshsigner.io/audit", 3600)
    assert not parse_serve_args(container_args(off)).mirror_certificate_signing_requests


def test_the_audit_mirror_signs_only_its_own_signer_name(helm):
    docs = render(helm, "app.mirror.enabled=true", "app.mirror.signerName=example.com/audit", "app.mirror.retention=2h")
    signers = {rule for rule in rules(docs) if rule[2] == "signers"}
    assert signers == {("ClusterRole", GROUP, "signers", verb, "example.com/audit") for verb in ("approve", "sign")}
    settings = parse_serve_args(container_args(docs))
    assert (settings.mirror_signer_name, settings.mirror_retention) == ("example.com/audit", 7200)


def test_the_local_signer_with_a_jwks_file_talks_to_the_cluster_only_for_the_mirror(helm):
    """Without the mirror this configuration has no rights at all; the mirror brings its rules and, as the pod now
    uses the API, the cluster duties (docs/cluster-duties.md)."""
    pinned = ("app.signer=local", "app.server.authenticator=jwks", "app.server.jwks.file=/j/jwks.json",
              "app.server.jwks.issuer=https://i", "app.controller.clusterDuties=false")  # fmt: skip
    assert rules(render(helm, *pinned)) == set()
    assert rules(render(helm, *pinned, "app.mirror.enabled=true")) == MIRROR | SELF_REVIEW


def test_istiods_dynamic_certificate_with_kubernetes_csr_is_the_secret_with_the_local_signers_rules(helm):
    """meshsigner writes istiod-tls itself in both modes, so the same Role on that one Secret comes with it."""
    dynamic, off = "app.tls.istiodCertificateEnable=dynamic", "app.tls.istiodCertificateEnable=false"
    csr_added = rules(render(helm, *CSR_MODE, dynamic)) - rules(render(helm, *CSR_MODE, off))
    local_added = rules(render(helm, "app.signer=local", dynamic)) - rules(render(helm, "app.signer=local", off))
    assert csr_added == local_added
    assert {rule[2] for rule in csr_added} == {"secrets"}
    settings = parse_serve_args(container_args(render(helm, *CSR_MODE, dynamic)))
    assert settings.istiod_cert_enabled and settings.istiod_cert_duration == 3600
