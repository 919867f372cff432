"""Flags of ``meshsigner serve``: istio-csr's names and defaults, each also read from ``MESHSIGNER_<FLAG>``.

Precedence: command line, then environment, then default. Booleans take ``--flag``, ``--flag=true`` and
``--flag=false``; lists are comma-separated; durations use Go's form (``1h``, ``30m``). Bad values stop the start
with a message naming the flag. This is the only module that reads the environment.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from environs import Env

from policies.durations import parse_duration

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


def _positive_duration(text: str) -> float:
    value = float(parse_duration(text))
    if value <= 0:
        raise ValueError("must be positive")
    return value


FLAGS: tuple[Flag, ...] = (
    # server
    Flag("serving-address", "0.0.0.0:6443", "gRPC listen address (host:port)"),
    Flag("max-client-certificate-duration", 3600.0, "cap on workload certificate lifetime", _positive_duration),
    Flag("cluster-id", "Kubernetes", "the only accepted value of the clusterid request header (when set)"),
    Flag("ca-trusted-node-accounts", (), "namespace/serviceaccount entries allowed to impersonate", parse_list),
    Flag("request-timeout", 30.0, "server-side bound on every CreateCertificate call", _positive_duration),
    Flag("max-in-flight", 512, "concurrent CreateCertificate calls before RESOURCE_EXHAUSTED", _positive_int),
    Flag("workers", 1, "server processes sharing the serving port", _positive_int),
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
    Flag("decision-log", "", "file receiving one JSON decision record per request"),
)


@dataclass(frozen=True)
class Settings:
    serving_address: str
    max_client_certificate_duration: float
    cluster_id: str
    ca_trusted_node_accounts: tuple[str, ...]
    request_timeout: float
    max_in_flight: int
    workers: int
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
    decision_log: str

    def to_argv(self) -> list[str]:
        """The flags that reproduce these settings (used to start worker processes)."""
        argv = []
        for flag in FLAGS:
            value = getattr(self, flag.attr)
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, float):
                value = f"{int(value)}s"
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


def resolve(cli: argparse.Namespace) -> Settings:
    """Build Settings from parsed flags, the environment and the defaults, then validate combinations."""
    env = Env()
    values: dict[str, Any] = {}
    for flag in FLAGS:
        if hasattr(cli, flag.attr):
            values[flag.attr] = _convert(flag, getattr(cli, flag.attr), f"--{flag.name}")
            continue
        raw = env.str(flag.env_name, None)
        if raw is None:
            values[flag.attr] = flag.default
        else:
            values[flag.attr] = _convert(flag, raw, f"{flag.env_name} (--{flag.name})")
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    if not settings.serving_certificate_dns_names:
        raise SettingsError("--serving-certificate-dns-names must not be empty")
    if not settings.token_audiences:
        raise SettingsError("--token-audiences must not be empty (an empty list means the API server's audience)")
    host, sep, port = settings.serving_address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SettingsError(f"--serving-address {settings.serving_address!r} must be host:port")
    if settings.signer == "local" and not settings.local_ca_dir:
        raise SettingsError("--signer local needs --local-ca-dir")
    if settings.authenticator == "jwks" and not (settings.jwks_file and settings.token_issuer):
        raise SettingsError("--authenticator jwks needs --jwks-file and --token-issuer")
    algorithm, size = settings.serving_signature_algorithm, settings.serving_certificate_key_size
    if algorithm == "RSA" and size < 2048:
        raise SettingsError("--serving-certificate-key-size must be at least 2048 for RSA")
    if algorithm == "ECDSA" and size not in (256, 384):
        raise SettingsError("--serving-certificate-key-size must be 256 or 384 for ECDSA")
    for account in settings.ca_trusted_node_accounts:
        namespace, sep, name = account.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise SettingsError(f"--ca-trusted-node-accounts entry {account!r} must be namespace/serviceaccount")


def parse_serve_args(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(prog="meshsigner serve")
    add_flags(parser)
    return resolve(parser.parse_args(list(argv)))
