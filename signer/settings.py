"""Flags of ``meshsigner serve``: istio-csr's names and defaults, each also read from ``MESHSIGNER_<FLAG>``.

Precedence: command line, then environment, then default. Booleans take ``--flag``, ``--flag=true`` and
``--flag=false``; lists are comma-separated; durations use Go's form (``1h``, ``30m``). Bad values stop the start
with a message naming the flag. This is the only module that reads ``MESHSIGNER_*`` variables.

A variable goes through the same parser as its flag, so both accept the same text and fail with the same message
(naming the variable and its flag). That is why environs is not used: its typed getters would be a second parser
per type, with other spellings (durations, booleans, lists) and other error messages than the flags'.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clocks.durations import parse_duration

ENV_PREFIX = "MESHSIGNER_"
_TRUE = {"1", "t", "true", "yes", "y", "on"}
_FALSE = {"0", "f", "false", "no", "n", "off"}


class SettingsError(ValueError):
    """A flag or environment variable has an unusable value; the message names it."""


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_annotations(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in parse_list(text):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{item!r} is not key=value")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


@dataclass(frozen=True)
class Flag:
    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    is_bool: bool = False

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a port")
    return port


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        from signer.worker_processes import usable_cpus  # that module imports this one

        return usable_cpus()
    return _positive_int(text)


def _positive_duration(text: str) -> float:
    value = float(parse_duration(text))
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _non_negative_duration(text: str) -> float:
    value = float(parse_duration(text))
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


# Serving TLS options in Kubernetes/Go spelling (istio-csr's --serving-tls-*), with the OpenSSL names gRPC's
# C core understands. TLS 1.3 suites are not configurable in Go either.
TLS_VERSIONS = ("VersionTLS12", "VersionTLS13")
TLS_CIPHER_SUITES: dict[str, str] = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}
TLS_CURVES: dict[str, str] = {
    "X25519": "X25519",
    "CurveP256": "P-256",
    "P-256": "P-256",
    "P256": "P-256",
    "CurveP384": "P-384",
    "P-384": "P-384",
    "P384": "P-384",
    "CurveP521": "P-521",
    "P-521": "P-521",
    "P521": "P-521",
}
_CURVE_IDS = {"29": "X25519", "23": "P-256", "24": "P-384", "25": "P-521"}


def _tls_min_version(text: str) -> str:
    value = text.strip()
    if value in ("VersionTLS10", "VersionTLS11"):
        raise ValueError("TLS below 1.2 is not allowed")
    if value and value not in TLS_VERSIONS:
        raise ValueError(f"choose {' or '.join(TLS_VERSIONS)}")
    return value


def _cipher_suites(text: str) -> tuple[str, ...]:
    suites = parse_list(text)
    unknown = [s for s in suites if s not in TLS_CIPHER_SUITES]
    if unknown:
        raise ValueError(f"unknown or insecure cipher suites {', '.join(unknown)}")
    return suites


def _curves(text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",")) if text.strip() else ()
    for item in items:
        if not item:
            raise ValueError("empty curve entry")
        if item not in TLS_CURVES and item not in _CURVE_IDS:
            raise ValueError(f"unknown curve {item!r}")
    return items


_ANNOTATION_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a namespace name


def _annotations(text: str) -> tuple[tuple[str, str], ...]:
    pairs = parse_annotations(text)
    for key, _ in pairs:
        prefix, slash, name = key.rpartition("/")
        if not _ANNOTATION_NAME.match(name) or (slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))):
            raise ValueError(f"{key!r} is not a valid annotation key")
    return pairs


# parsers of the cluster duties' flags (leader election, trust distribution, istiod's certificate)
_LABEL_KEY = (
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)
_LABEL_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_REQUIREMENT = re.compile(
    rf"^\s*(!\s*{_LABEL_KEY}|{_LABEL_KEY}\s*((==?|!=)\s*{_LABEL_VALUE}"
    rf"|\s(in|notin)\s*\(\s*{_LABEL_VALUE}(\s*,\s*{_LABEL_VALUE})*\s*\))?)\s*$"
)


def _label_selector(text: str) -> str:
    """Kubernetes label-selector syntax (``k=v``, ``k!=v``, ``k in (a,b)``, ``k notin (a)``, ``k``, ``!k``),
    checked here so that a typo stops the start instead of failing every namespace list."""
    depth, start, requirements = 0, 0, []
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            requirements.append(text[start:index])
            start = index + 1
    requirements.append(text[start:])
    if text.strip():
        for requirement in requirements:
            if not _REQUIREMENT.match(requirement):
                raise ValueError(f"{requirement.strip()!r} is not a label-selector requirement")
    return text.strip()


def _dns_names(text: str) -> tuple[str, ...]:
    names = parse_list(text)
    for name in names:
        if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            raise ValueError(f"{name!r} is not a DNS-1123 subdomain")
    return names


def _key_algorithm(text: str) -> str:
    return text.strip().upper()


def _revisions(text: str) -> tuple[str, ...]:
    revisions = parse_list(text)
    for revision in revisions:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", revision):
            raise ValueError(f"{revision!r} is not a revision name (DNS label)")
    return revisions


FLAGS: tuple[Flag, ...] = (
    # server
    Flag("serving-address", "0.0.0.0:6443", "gRPC listen address (host:port)"),
    Flag("max-client-certificate-duration", 3600.0, "cap on workload certificate lifetime", _positive_duration),
    Flag("cluster-id", "Kubernetes", "the only accepted value of the clusterid request header (when set)"),
    Flag("ca-trusted-node-accounts", (), "namespace/serviceaccount entries allowed to impersonate", parse_list),
    Flag("request-timeout", 30.0, "server-side bound on every CreateCertificate call", _positive_duration),
    Flag("max-in-flight", 512, "concurrent CreateCertificate calls before RESOURCE_EXHAUSTED", _positive_int),
    Flag("workers", 1, "server processes sharing the serving port; auto: one per usable CPU", _workers),
    Flag(
        "event-loop",
        "uvloop",
        "the asyncio event loop: uvloop (libuv; measured 5-7 % less CPU per certificate) or Python's own",
        str,
        ("uvloop", "asyncio"),
    ),
    Flag(
        "enable-client-cert-authenticator",
        False,
        "also accept a valid mesh client certificate (mTLS) as authentication, for renewing its own identity",
        parse_bool,
        is_bool=True,
    ),
    Flag(
        "shutdown-grace-period",
        30.0,
        "on SIGTERM, how long calls already accepted may take to finish before they are cancelled",
        _positive_duration,
    ),
    # trust and serving certificate
    Flag("trust-domain", "cluster.local", "trust domain of the SPIFFE IDs issued"),
    Flag("root-ca-file", "", "PEM bundle of pinned mesh roots (watched)"),
    Flag(
        "serving-certificate-dns-names",
        ("cert-manager-istio-csr.cert-manager.svc",),
        "DNS names of the gRPC serving certificate",
        parse_list,
    ),
    Flag("serving-certificate-duration", 3600.0, "lifetime of the serving certificate", _positive_duration),
    Flag("serving-certificate-key-size", 2048, "serving key size (RSA bits, or 256/384 for ECDSA)", int),
    Flag("serving-signature-algorithm", "RSA", "serving key algorithm", str, ("RSA", "ECDSA")),
    # probes, metrics, logs
    Flag("readiness-probe-port", 6060, "port of the readiness endpoint (0 disables)", _port),
    Flag("readiness-probe-path", "/readyz", "path of the readiness endpoint"),
    Flag("metrics-port", 9402, "port of the Prometheus /metrics endpoint (0 disables)", _port),
    Flag("log-level", "info", "debug, info, warning, error, or istio-csr's numeric verbosity 1-5"),
    Flag("log-format", "text", "log line format", str, ("text", "json")),
    # signing backend
    Flag("signer", "cert-manager", "how CSRs get signed", str, ("local", "cert-manager", "kubernetes-csr")),
    Flag("local-ca-dir", "", "with --signer local: folder holding (or receiving) the CA"),
    Flag("local-ca-key-type", "ecdsa", "with --signer local: key of a newly created root", str, ("ecdsa", "rsa")),
    # authentication
    Flag("authenticator", "tokenreview", "how workloads are authenticated", str, ("tokenreview", "jwks")),
    Flag("jwks-file", "", "with --authenticator jwks: JWKS of the token issuer (reloaded when it changes)"),
    Flag("token-issuer", "", "with --authenticator jwks: the exact iss claim expected"),
    Flag("token-audiences", ("istio-ca",), "accepted token audiences", parse_list),
    # policy
    Flag("policy-dir", "", "folder of YAML policies (watched); empty = built-in istio-csr rule"),
    Flag(
        "policy-source",
        "directory",
        "where policies come from: --policy-dir, or IdentityPolicy/PolicySettings objects (list+watch)",
        str,
        ("directory", "kubernetes"),
    ),
    Flag(
        "policy-root-namespace",
        "istio-system",
        "with --policy-source kubernetes: IdentityPolicy objects here apply mesh-wide; elsewhere, to their namespace",
    ),
    Flag(
        "policy-label-selector",
        "",
        "with --policy-source kubernetes: label selector of the policy objects read (empty: all)",
        _label_selector,
    ),
    Flag("decision-log", "", "file receiving one JSON decision record per request"),
    # Kubernetes client
    Flag("kubeconfig", "", "kubeconfig file; empty = in-cluster configuration"),
    Flag("kube-api-qps", 50.0, "Kubernetes API requests per second (client-side rate limit)", _positive_float),
    Flag("kube-api-burst", 100, "Kubernetes API requests allowed in a burst above the QPS", _positive_int),
    Flag(
        "disable-kubernetes-client-rate-limiter",
        False,
        "no client-side rate limit on Kubernetes API calls",
        parse_bool,
        is_bool=True,
    ),
    Flag(
        "token-review-cache-duration",
        30.0,
        "how long a successful TokenReview is reused (0 = no cache)",
        _non_negative_duration,
    ),
    # authentication under attack (signer/auth/prescreen.py, refusal_limit.py, cluster_keys.py; docs/authentication.md)
    Flag(
        "token-prescreen",
        True,
        "refuse malformed/foreign/expired tokens offline, before any TokenReview",
        parse_bool,
        is_bool=True,
    ),
    Flag(
        "token-review-negative-cache-duration",
        10.0,
        "how long a token TokenReview rejected is refused without another review (0 = off)",
        _non_negative_duration,
    ),
    Flag(
        "kube-api-token-review-share",
        0.2,
        "share of --kube-api-qps/--kube-api-burst reserved for TokenReviews and "
        "OIDC discovery; the rest serves the signing path",
        _positive_float,
    ),
    Flag(
        "peer-auth-failure-qps", 1.0, "authentication failures a second regained by one peer address", _positive_float
    ),
    Flag(
        "peer-auth-failure-burst",
        20,
        "authentication failures one peer address may have before its calls are "
        "refused with RESOURCE_EXHAUSTED (0 = no per-peer limit)",
        int,
    ),
    Flag("jwks-refresh-interval", 300.0, "how often the cluster's OIDC discovery keys are re-read", _positive_duration),
    Flag(
        "jwks-min-refresh-interval",
        10.0,
        "least time between key re-reads caused by an unknown kid",
        _positive_duration,
    ),
    # cert-manager
    Flag("certificate-namespace", "istio-system", "namespace of every CertificateRequest"),
    Flag("issuer-enabled", True, "use the static issuer of --issuer-name/-kind/-group", parse_bool, is_bool=True),
    Flag("issuer-name", "istio-ca", "issuerRef.name of the static issuer"),
    Flag("issuer-kind", "Issuer", "issuerRef.kind of the static issuer"),
    Flag("issuer-group", "cert-manager.io", "issuerRef.group of the static issuer"),
    Flag("runtime-issuance-config-map-name", "", "ConfigMap naming the issuer at runtime (watched)"),
    Flag("runtime-issuance-config-map-namespace", "", "namespace of that ConfigMap"),
    Flag("certificate-request-additional-annotations", (), "k=v,k2=v2 added to every CertificateRequest", _annotations),
    Flag(
        "preserve-certificate-requests",
        False,
        "keep CertificateRequests after use (debugging only)",
        parse_bool,
        is_bool=True,
    ),
    Flag(
        "approve-certificate-requests",
        False,
        "meshsigner sets Approved on its own CertificateRequests",
        parse_bool,
        is_bool=True,
    ),
    Flag("certificate-request-timeout", 30.0, "longest wait for a CertificateRequest to be signed", _positive_duration),
    # Kubernetes CSR API (--signer kubernetes-csr) and the audit mirror; docs/kubernetes-csr-mode.md
    Flag("signer-name", "", "with --signer kubernetes-csr: spec.signerName of every CertificateSigningRequest"),
    Flag(
        "approve-certificate-signing-requests",
        True,
        "with --signer kubernetes-csr: meshsigner approves its own CertificateSigningRequests",
        parse_bool,
        is_bool=True,
    ),
    Flag(
        "preserve-certificate-signing-requests",
        False,
        "keep CertificateSigningRequests after use (debugging only)",
        parse_bool,
        is_bool=True,
    ),
    Flag(
        "mirror-certificate-signing-requests",
        False,
        "with --signer cert-manager or local: mirror every decided request as a CertificateSigningRequest",
        parse_bool,
        is_bool=True,
    ),
    Flag("mirror-signer-name", "meshsigner.io/audit", "signerName of the audit mirror's CertificateSigningRequests"),
    Flag("mirror-retention", 3600.0, "audit mirrors older than this are deleted", _positive_duration),
    # serving TLS
    Flag(
        "serving-tls-min-version",
        "",
        "minimum TLS version of the gRPC listener (VersionTLS12, VersionTLS13)",
        _tls_min_version,
    ),
    Flag(
        "serving-tls-cipher-suites", (), "TLS 1.2 cipher suites of the gRPC listener (Kubernetes names)", _cipher_suites
    ),
    Flag("serving-tls-curve-preferences", (), "key-exchange curves of the gRPC listener", _curves),
    # cluster duties (leader election, trust distribution, istiod's certificate)
    Flag(
        "cluster-duties",
        True,
        "with Kubernetes access, take part in leader election and, when leading, run the cluster controllers",
        parse_bool,
        is_bool=True,
    ),
    Flag("leader-election-namespace", "istio-system", "namespace of the leader-election Lease"),
    Flag("leader-election-name", "istio-csr", "name of the Lease (istio-csr's: one writer across both during a move)"),
    Flag("leader-election-lease-duration", 15.0, "how long a Lease is valid without renewal", _positive_duration),
    Flag(
        "leader-election-renew-deadline", 10.0, "the leader stops leading after this long unrenewed", _positive_duration
    ),
    Flag("leader-election-retry-period", 2.0, "between Lease reads and renewals", _positive_duration),
    Flag(
        "configmap-namespace-selector",
        "",
        "label selector of the namespaces given istio-ca-root-cert (empty: all)",
        _label_selector,
    ),
    Flag("max-concurrent-reconciles", 1, "namespaces (ConfigMap writes) reconciled at once", _positive_int),
    Flag("cluster-trust-bundle-name", "", "also publish the roots as this ClusterTrustBundle (when the API serves it)"),
    Flag("istiod-cert-enabled", False, "keep istiod's certificate in the Secret istiod-tls", parse_bool, is_bool=True),
    Flag("istiod-cert-name", "istiod-dynamic", "name of istiod's cert-manager Certificate"),
    Flag("istiod-cert-namespace", "istio-system", "namespace of istiod's Certificate and Secret"),
    Flag("istiod-cert-duration", 3600.0, "lifetime of istiod's certificate", _positive_duration),
    Flag(
        "istiod-cert-renew-before", 1800.0, "renew istiod's certificate this long before it expires", _positive_duration
    ),
    Flag("istiod-cert-key-algorithm", "RSA", "istiod's key algorithm", _key_algorithm, ("RSA", "ECDSA")),
    Flag("istiod-cert-key-size", 2048, "istiod's key size (RSA >= 2048; ECDSA 256 or 384; 0: the default)", int),
    Flag("istiod-cert-additional-dns-names", (), "extra DNS names of istiod's certificate", _dns_names),
    Flag("istiod-cert-additional-annotations", (), "k=v annotations set on istiod's Certificate", _annotations),
    Flag("istiod-cert-istio-revisions", (), "revisions: istiod.<ns>.svc (default), istiod-<rev>.<ns>.svc", _revisions),
)


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``meshsigner serve`` is configured with (flags, then ``MESHSIGNER_*``, then defaults)."""

    serving_address: str
    max_client_certificate_duration: float
    cluster_id: str
    ca_trusted_node_accounts: tuple[str, ...]
    request_timeout: float
    max_in_flight: int
    workers: int
    event_loop: str
    enable_client_cert_authenticator: bool
    shutdown_grace_period: float
    trust_domain: str
    root_ca_file: str
    serving_certificate_dns_names: tuple[str, ...]
    serving_certificate_duration: float
    serving_certificate_key_size: int
    serving_signature_algorithm: str
    readiness_probe_port: int
    readiness_probe_path: str
    metrics_port: int
    log_level: str
    log_format: str
    signer: str
    local_ca_dir: str
    local_ca_key_type: str
    authenticator: str
    jwks_file: str
    token_issuer: str
    token_audiences: tuple[str, ...]
    policy_dir: str
    policy_source: str
    policy_root_namespace: str
    policy_label_selector: str
    decision_log: str
    kubeconfig: str
    kube_api_qps: float
    kube_api_burst: int
    disable_kubernetes_client_rate_limiter: bool
    token_review_cache_duration: float
    token_prescreen: bool
    token_review_negative_cache_duration: float
    kube_api_token_review_share: float
    peer_auth_failure_qps: float
    peer_auth_failure_burst: int
    jwks_refresh_interval: float
    jwks_min_refresh_interval: float
    certificate_namespace: str
    issuer_enabled: bool
    issuer_name: str
    issuer_kind: str
    issuer_group: str
    runtime_issuance_config_map_name: str
    runtime_issuance_config_map_namespace: str
    certificate_request_additional_annotations: tuple[tuple[str, str], ...]
    preserve_certificate_requests: bool
    approve_certificate_requests: bool
    certificate_request_timeout: float
    signer_name: str
    approve_certificate_signing_requests: bool
    preserve_certificate_signing_requests: bool
    mirror_certificate_signing_requests: bool
    mirror_signer_name: str
    mirror_retention: float
    serving_tls_min_version: str
    serving_tls_cipher_suites: tuple[str, ...]
    serving_tls_curve_preferences: tuple[str, ...]
    # cluster duties
    cluster_duties: bool
    leader_election_namespace: str
    leader_election_name: str
    leader_election_lease_duration: float
    leader_election_renew_deadline: float
    leader_election_retry_period: float
    configmap_namespace_selector: str
    max_concurrent_reconciles: int
    cluster_trust_bundle_name: str
    istiod_cert_enabled: bool
    istiod_cert_name: str
    istiod_cert_namespace: str
    istiod_cert_duration: float
    istiod_cert_renew_before: float
    istiod_cert_key_algorithm: str
    istiod_cert_key_size: int
    istiod_cert_additional_dns_names: tuple[str, ...]
    istiod_cert_additional_annotations: tuple[tuple[str, str], ...]
    istiod_cert_istio_revisions: tuple[str, ...]

    @property
    def static_issuer(self) -> tuple[str, str, str] | None:
        """(name, kind, group) of the static issuer, or None (istio-csr: disabled, or all three empty)."""
        parts = (self.issuer_name, self.issuer_kind, self.issuer_group)
        if not self.issuer_enabled or not any(parts):
            return None
        return parts

    @property
    def runtime_issuer_configured(self) -> bool:
        return bool(self.runtime_issuance_config_map_name and self.runtime_issuance_config_map_namespace)

    def to_argv(self) -> list[str]:
        """The flags that reproduce these settings (used to start worker processes)."""
        argv = []
        for flag in FLAGS:
            value = getattr(self, flag.attr)
            if isinstance(value, tuple):
                value = ",".join(item if isinstance(item, str) else "=".join(item) for item in value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, float):
                value = repr(value) if flag.parse is _positive_float else f"{int(value)}s"
            argv.append(f"--{flag.name}={value}")
        return argv


def add_flags(parser: argparse.ArgumentParser) -> None:
    for flag in FLAGS:
        kwargs: dict[str, Any] = {"dest": flag.attr, "default": argparse.SUPPRESS, "help": flag.help}
        if flag.is_bool:
            kwargs.update(nargs="?", const="true")
        parser.add_argument(f"--{flag.name}", metavar=flag.env_name, **kwargs)


def _convert(flag: Flag, raw: str, source: str) -> Any:
    try:
        value = flag.parse(raw)
    except ValueError as exc:
        raise SettingsError(f"invalid value {raw!r} for {source}: {exc}") from None
    if flag.choices and value not in flag.choices:
        raise SettingsError(f"invalid value {raw!r} for {source}: choose one of {', '.join(flag.choices)}")
    return value


def resolve(cli: argparse.Namespace, environment: Mapping[str, str] | None = None) -> ServeSettings:
    """Build the settings from parsed flags, the environment (``os.environ`` unless given) and the defaults, then
    validate combinations."""
    env = os.environ if environment is None else environment
    values: dict[str, Any] = {}
    for flag in FLAGS:
        if hasattr(cli, flag.attr):
            values[flag.attr] = _convert(flag, getattr(cli, flag.attr), f"--{flag.name}")
            continue
        raw = env.get(flag.env_name)
        if raw is None:
            values[flag.attr] = flag.default
        else:
            values[flag.attr] = _convert(flag, raw, f"{flag.env_name} (--{flag.name})")
    settings = ServeSettings(**values)
    validate(settings)
    return settings


def _signer_name_ok(name: str) -> bool:
    domain, sep, path = name.partition("/")
    return bool(sep and domain and path and "." in domain)


def validate(settings: ServeSettings) -> None:
    """Combinations of flags that cannot work together stop the start (each check: one topic, in this order)."""
    for check in (
        _check_server,
        _check_cert_manager,
        _check_client_certs,
        _check_csr_api,
        _check_node_accounts,
        _check_policy_source,
        _check_cluster_duties,
    ):
        check(settings)


def _check_server(settings: ServeSettings) -> None:
    """The listener, its certificate, the signer and the authenticator."""
    if not settings.serving_certificate_dns_names:
        raise SettingsError("--serving-certificate-dns-names must not be empty")
    if not settings.token_audiences:
        raise SettingsError("--token-audiences must not be empty (an empty list means the API server's audience)")
    host, sep, port = settings.serving_address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SettingsError(f"--serving-address {settings.serving_address!r} must be host:port")
    if settings.signer == "local" and not settings.local_ca_dir:
        raise SettingsError("--signer local needs --local-ca-dir")
    if settings.authenticator == "jwks" and settings.jwks_file and not settings.token_issuer:
        raise SettingsError("--authenticator jwks with --jwks-file needs --token-issuer")
    if not 0 < settings.kube_api_token_review_share < 1:
        raise SettingsError("--kube-api-token-review-share must be between 0 and 1 (exclusive)")
    if settings.peer_auth_failure_burst < 0:
        raise SettingsError("--peer-auth-failure-burst must not be negative")
    algorithm, size = settings.serving_signature_algorithm, settings.serving_certificate_key_size
    if algorithm == "RSA" and size < 2048:
        raise SettingsError("--serving-certificate-key-size must be at least 2048 for RSA")
    if algorithm == "ECDSA" and size not in (256, 384):
        raise SettingsError("--serving-certificate-key-size must be 256 or 384 for ECDSA")


def _check_cert_manager(settings: ServeSettings) -> None:
    """The static and runtime issuers (--signer cert-manager)."""
    if settings.static_issuer is not None and not all(settings.static_issuer):
        raise SettingsError("--issuer-name, --issuer-kind and --issuer-group must all be set (or all empty)")
    if settings.runtime_issuance_config_map_name and not settings.runtime_issuance_config_map_namespace:
        raise SettingsError("--runtime-issuance-config-map-name needs --runtime-issuance-config-map-namespace")
    if settings.signer == "cert-manager":
        if settings.static_issuer is None and not settings.runtime_issuer_configured:
            raise SettingsError(
                "--signer cert-manager needs an issuer: --issuer-name/-kind/-group with --issuer-enabled, or "
                "--runtime-issuance-config-map-name and --runtime-issuance-config-map-namespace"
            )
        if not settings.certificate_namespace:
            raise SettingsError("--certificate-namespace must not be empty")


def _check_client_certs(settings: ServeSettings) -> None:
    if settings.enable_client_cert_authenticator and settings.signer != "local" and not settings.root_ca_file:
        raise SettingsError(
            "--enable-client-cert-authenticator needs pinned roots to verify client certificates against: "
            "--root-ca-file (or --signer local, whose roots are its own)"
        )


def _check_node_accounts(settings: ServeSettings) -> None:
    for account in settings.ca_trusted_node_accounts:
        namespace, sep, name = account.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise SettingsError(f"--ca-trusted-node-accounts entry {account!r} must be namespace/serviceaccount")


def _check_policy_source(settings: ServeSettings) -> None:
    if settings.policy_source == "kubernetes":
        if settings.policy_dir:
            raise SettingsError(
                "--policy-dir is for --policy-source directory; with --policy-source kubernetes the policies are "
                "IdentityPolicy and PolicySettings objects"
            )
        if not _DNS_LABEL.fullmatch(settings.policy_root_namespace):
            raise SettingsError(f"--policy-root-namespace {settings.policy_root_namespace!r} is not a namespace name")


def _check_csr_api(settings: ServeSettings) -> None:
    """--signer kubernetes-csr and the audit mirror (docs/kubernetes-csr-mode.md)."""
    if settings.signer == "kubernetes-csr":
        if not _signer_name_ok(settings.signer_name):
            raise SettingsError(
                "--signer kubernetes-csr needs --signer-name domain/path (e.g. clusterissuers.cert-manager.io/istio-ca)"
            )
        if not settings.root_ca_file:
            raise SettingsError(
                "--signer kubernetes-csr needs --root-ca-file (the CSR API carries no CA to verify chains against)"
            )
        if settings.mirror_certificate_signing_requests:
            raise SettingsError(
                "--mirror-certificate-signing-requests is for --signer cert-manager and local: with kubernetes-csr the "
                "requests already are CertificateSigningRequests"
            )
    if settings.mirror_certificate_signing_requests and not _signer_name_ok(settings.mirror_signer_name):
        raise SettingsError("--mirror-signer-name must be domain/path (e.g. meshsigner.io/audit)")
    if settings.mirror_certificate_signing_requests and settings.mirror_signer_name == settings.signer_name:
        raise SettingsError("--mirror-signer-name must differ from --signer-name")


def _check_cluster_duties(settings: ServeSettings) -> None:
    """Leader election, the ClusterTrustBundle and istiod's certificate."""
    lease, renew, retry = (
        settings.leader_election_lease_duration,
        settings.leader_election_renew_deadline,
        settings.leader_election_retry_period,
    )
    if not lease > renew > retry:
        raise SettingsError(
            "--leader-election-lease-duration must exceed --leader-election-renew-deadline, which must exceed "
            "--leader-election-retry-period"
        )
    if settings.istiod_cert_renew_before >= settings.istiod_cert_duration:
        raise SettingsError("--istiod-cert-renew-before must be shorter than --istiod-cert-duration")
    algorithm, size = settings.istiod_cert_key_algorithm, settings.istiod_cert_key_size
    if algorithm == "RSA" and size and size < 2048:
        raise SettingsError("--istiod-cert-key-size must be at least 2048 for RSA")
    if algorithm == "ECDSA" and size not in (0, 256, 384):
        raise SettingsError("--istiod-cert-key-size must be 256 or 384 for ECDSA")
    if settings.cluster_trust_bundle_name and not _DNS_SUBDOMAIN.match(
        settings.cluster_trust_bundle_name.replace(":", ".")
    ):
        raise SettingsError(f"--cluster-trust-bundle-name {settings.cluster_trust_bundle_name!r} is not a valid name")


def parse_serve_args(argv: Sequence[str], environment: Mapping[str, str] | None = None) -> ServeSettings:
    parser = argparse.ArgumentParser(prog="meshsigner serve")
    add_flags(parser)
    return resolve(parser.parse_args(list(argv)), environment)
