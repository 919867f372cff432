"""--workers N: the Kubernetes API rate limit is the server's, so each process gets its share of it."""

from __future__ import annotations

import os

import pytest

from signer.settings import SettingsError, parse_serve_args
from signer.worker_processes import per_process_settings, usable_cpus, worker_command

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


def _cgroup_v2(tmp_path, quotas: dict[str, str]):
    """A cgroup v2 tree with cpu.max per folder, and the /proc/self/cgroup line naming its deepest folder."""
    root = tmp_path / "cgroup"
    for folder, cpu_max in quotas.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(cpu_max + "\n")
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text(f"0::/{max(quotas, key=len)}\n")
    return root, self_cgroup


@pytest.mark.parametrize(
    ("affinity", "quotas", "expected"),
    [
        (8, {"kubepods/pod": "max 100000"}, 8),  # no quota: the affinity mask decides
        (8, {"kubepods/pod": "200000 100000"}, 2),  # a 2-CPU limit
        (8, {"kubepods/pod": "150000 100000"}, 1),  # 1.5 CPUs: one worker unthrottled, not two throttled
        (8, {"kubepods": "300000 100000", "kubepods/pod": "max 100000"}, 3),  # an ancestor's quota applies too
        (2, {"kubepods/pod": "400000 100000"}, 2),  # taskset/cpuset narrower than the quota
        (4, {"kubepods/pod": "50000 100000"}, 1),  # half a CPU still runs one worker
    ],
)
def test_auto_workers_follow_affinity_and_the_cgroup_v2_quota(tmp_path, affinity, quotas, expected) -> None:
    root, self_cgroup = _cgroup_v2(tmp_path, quotas)
    assert usable_cpus(affinity=affinity, cgroup_root=root, self_cgroup=self_cgroup) == expected


def test_auto_workers_read_a_cgroup_v1_quota(tmp_path) -> None:
    mount = tmp_path / "cgroup" / "cpu,cpuacct" / "docker" / "abc"
    mount.mkdir(parents=True)
    (mount / "cpu.cfs_quota_us").write_text("300000\n")
    (mount / "cpu.cfs_period_us").write_text("100000\n")
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text("4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n0::/\n")
    assert usable_cpus(affinity=16, cgroup_root=tmp_path / "cgroup", self_cgroup=self_cgroup) == 3


def test_auto_workers_without_cgroup_information_use_the_affinity(tmp_path) -> None:
    assert usable_cpus(affinity=3, cgroup_root=tmp_path, self_cgroup=tmp_path / "missing") == 3


def test_workers_auto_resolves_to_a_number_of_processes() -> None:
    settings = parse_serve_args([*BASE, "--workers=auto"])
    assert 1 <= settings.workers <= len(os.sched_getaffinity(0))
    with pytest.raises(SettingsError, match="workers"):
        parse_serve_args([*BASE, "--workers=0"])
