from __future__ import annotations

import os

import pytest

from signer.settings import FLAGS, SettingsError, parse_bool, parse_serve_args


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No MESHSIGNER_* variable of the developer's shell may change these results."""
    for name in list(os.environ):
        if name.startswith("MESHSIGNER_"):
            monkeypatch.delenv(name)


def test_the_environment_is_clean():
    assert not [name for name in os.environ if name.startswith("MESHSIGNER_")]


LOCAL = ["--signer=local", "--local-ca-dir=/tmp/x", "--authenticator=jwks", "--jwks-file=j", "--token-issuer=i"]


def test_defaults_follow_istio_csr():
    settings = parse_serve_args([])
    assert settings.serving_address == "0.0.0.0:6443"
    assert settings.readiness_probe_port == 6060 and settings.metrics_port == 9402
    assert settings.trust_domain == "cluster.local" and settings.cluster_id == "Kubernetes"
    assert settings.max_client_certificate_duration == 3600
    assert settings.serving_certificate_dns_names == ("cert-manager-istio-csr.cert-manager.svc",)
    assert settings.token_audiences == ("istio-ca",)


def test_environment_then_command_line(monkeypatch):
    monkeypatch.setenv("MESHSIGNER_TRUST_DOMAIN", "env.example")
    monkeypatch.setenv("MESHSIGNER_TOKEN_AUDIENCES", "a, b")
    monkeypatch.setenv("MESHSIGNER_MAX_CLIENT_CERTIFICATE_DURATION", "2h")
    settings = parse_serve_args(LOCAL)
    assert settings.trust_domain == "env.example"
    assert settings.token_audiences == ("a", "b")
    assert settings.max_client_certificate_duration == 7200
    assert parse_serve_args([*LOCAL, "--trust-domain=cli.example"]).trust_domain == "cli.example"


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--metrics-port=http"], {}, "--metrics-port"),
        ([], {"MESHSIGNER_READINESS_PROBE_PORT": "70000"}, "MESHSIGNER_READINESS_PROBE_PORT"),
        (["--max-client-certificate-duration=forever"], {}, "--max-client-certificate-duration"),
        (["--signer=acme"], {}, "--signer"),
        (["--token-audiences="], {}, "--token-audiences"),
        (["--serving-certificate-dns-names=,"], {}, "--serving-certificate-dns-names"),
        (["--ca-trusted-node-accounts=ztunnel"], {}, "--ca-trusted-node-accounts"),
        (["--serving-signature-algorithm=ECDSA", "--serving-certificate-key-size=2048"], {}, "key-size"),
        (["--signer=local", "--local-ca-dir="], {}, "--local-ca-dir"),
    ],
)
def test_bad_settings_name_the_flag(monkeypatch, argv, env, named):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=named.replace("-", r"\-")):
        parse_serve_args([*LOCAL, *argv] if "--signer=local" not in argv else argv)


@pytest.mark.parametrize(
    ("flag", "raw"),
    [
        ("metrics-port", "http"),
        ("readiness-probe-port", "70000"),
        ("max-client-certificate-duration", "1500ms"),
        ("request-timeout", "0s"),
        ("workers", "0"),
        ("preserve-certificate-requests", "maybe"),
        ("log-format", "xml"),
        ("serving-tls-curve-preferences", "X25519,,P256"),
    ],
)
def test_a_variable_is_parsed_like_its_flag(flag, raw):
    """Same parser, same reason: only the name of the source differs."""
    variable = "MESHSIGNER_" + flag.upper().replace("-", "_")
    with pytest.raises(SettingsError) as from_flag:
        parse_serve_args([*LOCAL, f"--{flag}={raw}"])
    with pytest.raises(SettingsError) as from_variable:
        parse_serve_args(LOCAL, {variable: raw})
    assert str(from_variable.value) == str(from_flag.value).replace(f"--{flag}", f"{variable} (--{flag})")


def test_variables_take_typed_values():
    settings = parse_serve_args(
        LOCAL,
        {
            "MESHSIGNER_WORKERS": "3",
            "MESHSIGNER_KUBE_API_QPS": "12.5",
            "MESHSIGNER_REQUEST_TIMEOUT": "1m30s",
            "MESHSIGNER_PRESERVE_CERTIFICATE_REQUESTS": "true",
            "MESHSIGNER_CERTIFICATE_REQUEST_ADDITIONAL_ANNOTATIONS": "example.com/a=1",
        },
    )
    assert (settings.workers, settings.kube_api_qps, settings.request_timeout) == (3, 12.5, 90)
    assert settings.preserve_certificate_requests is True
    assert settings.certificate_request_additional_annotations == (("example.com/a", "1"),)


def test_round_trip_through_argv():
    settings = parse_serve_args([*LOCAL, "--token-audiences=a,b", "--request-timeout=45s"])
    assert parse_serve_args(settings.to_argv()) == settings


@pytest.mark.parametrize(("text", "value"), [("true", True), ("False", False), ("1", True), ("off", False)])
def test_booleans(text, value):
    assert parse_bool(text) is value


def test_every_flag_has_an_environment_name():
    names = {flag.env_name for flag in FLAGS}
    assert "MESHSIGNER_SERVING_CERTIFICATE_DNS_NAMES" in names and len(names) == len(FLAGS)


def test_readme_documents_every_flag():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [flag.name for flag in FLAGS if f"`--{flag.name}`" not in readme or f"`{flag.env_name}`" not in readme]
    assert not missing, f"README flag table lacks {missing}"


def test_in_cluster_defaults_follow_istio_csr():
    settings = parse_serve_args([])
    assert (settings.signer, settings.authenticator) == ("cert-manager", "tokenreview")
    assert settings.certificate_namespace == "istio-system"
    assert settings.static_issuer == ("istio-ca", "Issuer", "cert-manager.io")
    assert settings.preserve_certificate_requests is False and settings.approve_certificate_requests is False
    assert settings.certificate_request_timeout == 30
    assert settings.kubeconfig == "" and settings.disable_kubernetes_client_rate_limiter is False
    assert settings.certificate_request_additional_annotations == ()


def test_in_cluster_flags_parse():
    settings = parse_serve_args(
        [
            "--kubeconfig=/k",
            "--kube-api-qps=12.5",
            "--kube-api-burst=40",
            "--disable-kubernetes-client-rate-limiter",
            "--approve-certificate-requests=true",
            "--preserve-certificate-requests=false",
            "--issuer-enabled=false",
            "--runtime-issuance-config-map-name=cfg",
            "--runtime-issuance-config-map-namespace=cert-manager",
            "--certificate-request-additional-annotations=example.com/a=1,b=two",
            "--certificate-request-timeout=10s",
            "--serving-tls-min-version=VersionTLS13",
            "--serving-tls-cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "--serving-tls-curve-preferences=X25519, CurveP256,23",
        ]
    )
    assert settings.kube_api_qps == 12.5 and settings.kube_api_burst == 40
    assert settings.disable_kubernetes_client_rate_limiter and settings.approve_certificate_requests
    assert settings.static_issuer is None and settings.runtime_issuer_configured
    assert settings.certificate_request_additional_annotations == (("example.com/a", "1"), ("b", "two"))
    assert settings.serving_tls_curve_preferences == ("X25519", "CurveP256", "23")
    assert parse_serve_args(settings.to_argv()) == settings


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--issuer-enabled=false"], "needs an issuer"),
        (["--issuer-kind="], "--issuer-name, --issuer-kind and --issuer-group"),
        (["--runtime-issuance-config-map-name=cfg"], "--runtime-issuance-config-map-namespace"),
        (["--certificate-request-additional-annotations=bad key=1"], "--certificate-request-additional-annotations"),
        (["--certificate-request-additional-annotations=novalue"], "--certificate-request-additional-annotations"),
        (["--serving-tls-min-version=VersionTLS11"], "--serving-tls-min-version"),
        (["--serving-tls-cipher-suites=TLS_RSA_WITH_RC4_128_SHA"], "--serving-tls-cipher-suites"),
        (["--serving-tls-curve-preferences=X25519,,P256"], "--serving-tls-curve-preferences"),
        (["--kube-api-qps=0"], "--kube-api-qps"),
        (["--certificate-request-timeout=0s"], "--certificate-request-timeout"),
        (["--approve-certificate-requests=maybe"], "--approve-certificate-requests"),
    ],
)
def test_bad_in_cluster_settings_name_the_flag(argv, named):
    with pytest.raises(SettingsError, match=named.replace("-", r"\-")):
        parse_serve_args(argv)


def test_the_policy_source_defaults_to_the_directory():
    settings = parse_serve_args(LOCAL)
    assert (settings.policy_source, settings.policy_root_namespace, settings.policy_label_selector) == (
        "directory",
        "istio-system",
        "",
    )


def test_the_kubernetes_policy_source_parses_from_flags_and_variables():
    settings = parse_serve_args(
        [*LOCAL, "--policy-source=kubernetes"],
        {"MESHSIGNER_POLICY_ROOT_NAMESPACE": "mesh-root", "MESHSIGNER_POLICY_LABEL_SELECTOR": "team in (a,b)"},
    )
    assert (settings.policy_source, settings.policy_root_namespace, settings.policy_label_selector) == (
        "kubernetes",
        "mesh-root",
        "team in (a,b)",
    )
    assert parse_serve_args(settings.to_argv()) == settings


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--policy-source=configmap"], "--policy-source"),
        (["--policy-source=kubernetes", "--policy-dir=/p"], "--policy-dir is for --policy-source directory"),
        (["--policy-source=kubernetes", "--policy-root-namespace=Root_NS"], "--policy-root-namespace"),
        (["--policy-source=kubernetes", "--policy-label-selector=a=b,,"], "--policy-label-selector"),
    ],
)
def test_bad_policy_source_settings_name_the_flag(argv, named):
    with pytest.raises(SettingsError, match=named):
        parse_serve_args([*LOCAL, *argv])


def test_the_event_loop_is_uvloop_unless_asked_or_the_client_cert_front_needs_asyncio():
    from signer.serve import _event_loop_for

    assert parse_serve_args(LOCAL).event_loop == "uvloop"
    assert _event_loop_for(parse_serve_args(LOCAL)) == "uvloop"
    assert _event_loop_for(parse_serve_args([*LOCAL, "--event-loop=asyncio"])) == "asyncio"
    assert _event_loop_for(parse_serve_args([*LOCAL, "--enable-client-cert-authenticator"])) == "asyncio"
    with pytest.raises(SettingsError, match="--event-loop"):
        parse_serve_args([*LOCAL, "--event-loop=trio"])
