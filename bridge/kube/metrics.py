"""Metrics of the Kubernetes seam, on a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class KubeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "meshsigner_kube_api_requests_total",
            "Kubernetes API requests made, by verb, resource and result (HTTP status or 'error')",
            ["verb", "resource", "code"],
            registry=registry,
        )
        self.watch_restarts = Counter(
            "meshsigner_kube_watch_restarts_total",
            "Watches re-opened, by resource and reason (expired, relist, error)",
            ["resource", "reason"],
            registry=registry,
        )
