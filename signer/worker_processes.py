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
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace

from prometheus_client import CollectorRegistry, multiprocess, values

from signer.settings import ServeSettings

MULTIPROCESS_DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
WORKER_STOP_SECONDS = 10.0


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
        self._processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self._processes = [subprocess.Popen(self._command) for _ in range(self._count)]

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            try:
                process.wait(WORKER_STOP_SECONDS)
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
