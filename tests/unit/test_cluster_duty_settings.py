"""The cluster-duty flags: label selectors and lease timings are checked at start, and the extra --workers
processes never take part in the leader election."""

from __future__ import annotations

import pytest

from signer.settings import SettingsError, parse_serve_args
from signer.worker_processes import worker_command

LOCAL = ["--signer=local", "--local-ca-dir=/tmp/ca", "--authenticator=jwks", "--jwks-file=j", "--token-issuer=i"]


@pytest.mark.parametrize(
    "selector",
    ["", "env=prod", "env==prod", "env!=prod", "env in (a, b)", "env notin (a)", "managed", "!legacy", "a=b,c in (d)"],
)
def test_label_selectors_istio_csr_accepts(selector: str) -> None:
    assert parse_serve_args([*LOCAL, f"--configmap-namespace-selector={selector}"]).configmap_namespace_selector == (
        selector
    )


@pytest.mark.parametrize("selector", ["env in prod", "=x", "a b", "env=(x)", "a=b,,c"])
def test_label_selector_typos_stop_the_start(selector: str) -> None:
    with pytest.raises(SettingsError, match="configmap-namespace-selector"):
        parse_serve_args([*LOCAL, f"--configmap-namespace-selector={selector}"])


def test_lease_timings_must_nest() -> None:
    with pytest.raises(SettingsError, match="renew-deadline"):
        parse_serve_args([*LOCAL, "--leader-election-renew-deadline=20s"])
    settings = parse_serve_args([*LOCAL])
    assert (settings.leader_election_lease_duration, settings.leader_election_renew_deadline) == (15.0, 10.0)
    assert settings.leader_election_retry_period == 2.0


def test_istiod_renew_before_must_be_shorter_than_the_duration() -> None:
    with pytest.raises(SettingsError, match="istiod-cert-renew-before"):
        parse_serve_args([*LOCAL, "--istiod-cert-duration=30m", "--istiod-cert-renew-before=30m"])


def test_istiod_key_algorithm_is_upper_cased_and_sizes_checked() -> None:
    settings = parse_serve_args([*LOCAL, "--istiod-cert-key-algorithm=ecdsa", "--istiod-cert-key-size=384"])
    assert (settings.istiod_cert_key_algorithm, settings.istiod_cert_key_size) == ("ECDSA", 384)
    with pytest.raises(SettingsError, match="istiod-cert-key-size"):
        parse_serve_args([*LOCAL, "--istiod-cert-key-algorithm=ECDSA", "--istiod-cert-key-size=2048"])


def test_only_the_first_worker_process_takes_part_in_the_election() -> None:
    settings = parse_serve_args([*LOCAL, "--workers=3"])
    assert settings.cluster_duties
    assert "--cluster-duties=false" in worker_command(settings)
