"""The flags of this part: --enable-client-cert-authenticator (istio-csr's name, default off) needs roots to verify
against; --shutdown-grace-period bounds the drain on SIGTERM. Both reach --workers processes."""

from __future__ import annotations

import pytest

from signer.settings import SettingsError, parse_serve_args
from signer.worker_processes import worker_command

LOCAL = ["--signer=local", "--local-ca-dir=/tmp/ca", "--authenticator=tokenreview"]
CERT_MANAGER = ["--signer=cert-manager"]


def test_defaults_follow_istio_csr_and_the_request_timeout() -> None:
    settings = parse_serve_args(LOCAL, environment={})
    assert settings.enable_client_cert_authenticator is False
    assert settings.shutdown_grace_period == 30.0 == settings.request_timeout


def test_both_are_read_from_the_environment() -> None:
    environment = {
        "MESHSIGNER_ENABLE_CLIENT_CERT_AUTHENTICATOR": "true",
        "MESHSIGNER_SHUTDOWN_GRACE_PERIOD": "45s",
    }
    settings = parse_serve_args(LOCAL, environment=environment)
    assert settings.enable_client_cert_authenticator is True
    assert settings.shutdown_grace_period == 45.0


@pytest.mark.parametrize("value", ["0s", "-5s", "soon"])
def test_a_grace_period_must_be_a_positive_duration(value: str) -> None:
    with pytest.raises(SettingsError, match="--shutdown-grace-period"):
        parse_serve_args([*LOCAL, f"--shutdown-grace-period={value}"], environment={})


def test_client_certificates_need_roots_to_verify_against() -> None:
    with pytest.raises(SettingsError, match="--root-ca-file"):
        parse_serve_args([*CERT_MANAGER, "--enable-client-cert-authenticator"], environment={})
    pinned = parse_serve_args(
        [*CERT_MANAGER, "--enable-client-cert-authenticator", "--root-ca-file=/etc/roots.pem"], environment={}
    )
    assert pinned.enable_client_cert_authenticator
    assert parse_serve_args([*LOCAL, "--enable-client-cert-authenticator"], environment={})


def test_workers_inherit_both() -> None:
    settings = parse_serve_args(
        [*LOCAL, "--workers=2", "--enable-client-cert-authenticator", "--shutdown-grace-period=10s"], environment={}
    )
    command = worker_command(settings)
    assert "--enable-client-cert-authenticator=true" in command
    assert "--shutdown-grace-period=10s" in command
