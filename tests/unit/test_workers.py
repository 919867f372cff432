"""--workers N: the Kubernetes API rate limit is the server's, so each process gets its share of it."""

from __future__ import annotations

import pytest

from signer.settings import parse_serve_args
from signer.worker_processes import per_process_settings, worker_command

BASE = ["--signer=local", "--local-ca-dir=/tmp/ca", "--authenticator=tokenreview"]


def _flag(command: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
    assert len(values) == 1, (name, command)
    return values[0]


def test_one_process_keeps_the_configured_rate() -> None:
    settings = parse_serve_args([*BASE, "--kube-api-qps=50", "--kube-api-burst=100"])
    assert per_process_settings(settings) is settings


@pytest.mark.parametrize(("workers", "qps", "burst"), [(2, 25.0, 50), (3, 50 / 3, 33), (4, 12.5, 25)])
def test_the_rate_is_shared_among_the_workers(workers: int, qps: float, burst: int) -> None:
    settings = parse_serve_args([*BASE, f"--workers={workers}", "--kube-api-qps=50", "--kube-api-burst=100"])
    parent = per_process_settings(settings)
    assert (parent.kube_api_qps, parent.kube_api_burst) == (pytest.approx(qps), burst)
    assert parent.kube_api_qps * workers <= 50 + 1e-9 and parent.kube_api_burst * workers <= 100
    command = worker_command(settings)
    child = parse_serve_args(command[command.index("serve") + 1 :])
    assert (child.kube_api_qps, child.kube_api_burst) == (pytest.approx(qps), burst)
    assert (child.workers, child.metrics_port, child.readiness_probe_port) == (1, 0, 0)
    assert per_process_settings(child) is child  # a worker divides nothing again
    assert _flag(command, "workers") == "1"


def test_a_tiny_burst_still_allows_one_request() -> None:
    settings = parse_serve_args([*BASE, "--workers=4", "--kube-api-qps=1", "--kube-api-burst=2"])
    assert per_process_settings(settings).kube_api_burst == 1
