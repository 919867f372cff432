"""``--workers N``: extra server processes on the same port, their share of the API rate, and one ``/metrics``.

Only the first process serves probes and metrics and takes part in leader election (the others run with
``--cluster-duties=false``). So that its ``/metrics`` counts what every process did,
prometheus-client runs in multiprocess mode: each process writes its samples to files in a private directory that
the first process creates (``PROMETHEUS_MULTIPROC_DIR``, inherited by the workers), aggregates on each scrape and
removes when it exits. prometheus-client chooses where samples live when it is first imported, so the directory
must exist before that: this module imports nothing that loads it.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess, values

from signer.settings import ServeSettings

MULTIPROCESS_DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
WORKER_STOP_MARGIN_SECONDS = 5.0  # beyond the grace period: the worker's own hooks and exit
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def usable_cpus(
    *, affinity: int | None = None, cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP
) -> int:
    """``--workers auto``: how many CPUs this process may keep busy. The CPUs it may run on (sched_getaffinity,
    which a cpuset or ``taskset`` narrows), capped by the CPU quota of its cgroup and every ancestor's (cgroup v2
    ``cpu.max``; v1 ``cpu.cfs_quota_us``), rounded down: a 1.5-CPU quota runs one worker unthrottled, two would
    each be throttled. At least 1."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota(cgroup_root, self_cgroup)
    cpus = affinity if quota is None else min(affinity, math.floor(quota))
    return max(1, cpus)


def _cgroup_cpu_quota(root: Path, self_cgroup: Path) -> float | None:
    """The smallest CPU quota (in CPUs) on this process's cgroup path, or None without one (or unreadable)."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: "0::/path"
            quotas += _along(root, path, lambda d: _v2_quota(d / "cpu.max"))
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path", mounted under one of these names
            for mount in (controllers, "cpu,cpuacct", "cpu"):
                if (root / mount).is_dir():
                    quotas += _along(root / mount, path, _v1_quota)
                    break
    return min(quotas) if quotas else None


def _along(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas set on the cgroup at ``path`` under ``mount`` and on each of its ancestors up to the mount."""
    found: list[float] = []
    folder = mount / path.strip("/")
    while True:
        quota = read(folder)
        if quota is not None:
            found.append(quota)
        if folder == mount or mount not in folder.parents:
            return found
        folder = folder.parent


def _v2_quota(cpu_max: Path) -> float | None:
    try:
        quota, period = cpu_max.read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def per_process_settings(settings: ServeSettings) -> ServeSettings:
    """The settings one of ``--workers`` processes runs with. Each process has its own Kubernetes client and token
    bucket, so ``--kube-api-qps`` and ``--kube-api-burst`` (limits for the whole server) are
    divided among the processes: together they never exceed the configured rate."""
    if settings.workers <= 1:
        return settings
    return replace(
        settings,
        kube_api_qps=settings.kube_api_qps / settings.workers,
        kube_api_burst=max(1, settings.kube_api_burst // settings.workers),
    )


def worker_command(settings: ServeSettings) -> list[str]:
    """The command line of an extra worker: its share of the API rate, no probes or metrics (the first process
    serves those), and ``--workers=1`` so that it spawns nothing and divides nothing again."""
    child = replace(
        per_process_settings(settings), workers=1, metrics_port=0, readiness_probe_port=0, cluster_duties=False
    )
    return [sys.executable, "-m", "signer.cli", "serve", *child.to_argv()]


def metrics_are_shared() -> bool:
    """Whether this process writes its metrics for the first process to aggregate (``--workers`` above 1)."""
    return MULTIPROCESS_DIRECTORY_VARIABLE in os.environ


@contextlib.contextmanager
def shared_metrics_directory(settings: ServeSettings) -> Iterator[None]:
    """With ``--workers`` above 1, a private directory for every process's metrics, for the life of the server.
    Enter it in the first process before any metric exists (the workers inherit it)."""
    if settings.workers <= 1 or metrics_are_shared():
        yield
        return
    directory = tempfile.mkdtemp(prefix="meshsigner-metrics-")  # mode 0700: only this user's processes write here
    os.environ[MULTIPROCESS_DIRECTORY_VARIABLE] = directory
    # prometheus-client reads the variable once, at import, and this process imported it already (the policy
    # engine uses it): switch its value storage to the directory before the first metric is created. The workers
    # import it afresh with the variable set.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]  # prometheus-client: untyped
    try:
        yield
    finally:
        os.environ.pop(MULTIPROCESS_DIRECTORY_VARIABLE, None)
        values.ValueClass = values.MutexValue
        shutil.rmtree(directory, ignore_errors=True)


class WorkerProcesses:
    """The ``--workers`` processes beyond the first; stopped (SIGTERM, then waited for) when the first stops."""

    def __init__(self, settings: ServeSettings) -> None:
        self._command = worker_command(settings)
        self._count = settings.workers - 1
        self._stop_seconds = settings.shutdown_grace_period + WORKER_STOP_MARGIN_SECONDS
        self._processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self._processes = [subprocess.Popen(self._command) for _ in range(self._count)]

    def terminate(self) -> None:
        """Forward SIGTERM: every worker drains its own calls while this process drains its."""
        for process in self._processes:
            if process.poll() is None:
                process.terminate()

    def stop(self) -> None:
        """SIGTERM (again harmless), then wait up to the grace period and a margin before killing."""
        self.terminate()
        for process in self._processes:
            try:
                process.wait(self._stop_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if metrics_are_shared():
            for process in self._processes:
                # drop its live gauges (calls in flight) from the sums
                multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]  # prometheus-client: untyped


def metrics_exposition(registry: CollectorRegistry) -> CollectorRegistry:
    """What ``/metrics`` serves: this process's registry, or, with ``--workers`` above 1, the sum over every
    process's samples (this one's included: its metrics are written to the shared directory too)."""
    if not metrics_are_shared():
        return registry
    every_process = CollectorRegistry()
    multiprocess.MultiProcessCollector(every_process)  # type: ignore[no-untyped-call]  # prometheus-client: untyped
    return every_process
