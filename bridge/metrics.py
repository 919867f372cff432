"""Metrics of the cert-manager bridge, on a registry the caller owns (no global registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "meshsigner_certificate_requests_total",
            "CertificateRequests by outcome (issued, denied, invalid, failed, deleted, timeout, cancelled, "
            "create_failed, approve_failed, untrusted_chain, bad_chain)",
            ["purpose", "outcome"],
            registry=registry,
        )
        self.seconds = Histogram(
            "meshsigner_certificate_request_duration_seconds",
            "From creating a CertificateRequest to its terminal state",
            ["purpose"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "meshsigner_certificate_requests_in_flight",
            "CertificateRequests created and not yet resolved",
            registry=registry,
            multiprocess_mode="livesum",  # with --workers: summed over live workers
        )
        self.delete_failures = Counter(
            "meshsigner_certificate_request_delete_failures_total",
            "Deletes that failed (the periodic sweep removes those objects later)",
            registry=registry,
        )
        self.untrusted_chains = Counter(
            "meshsigner_untrusted_chains_total",
            "Issuer answers whose chain did not lead to a pinned root (alert on any increase)",
            registry=registry,
        )
        self.root_bundle_rejections = Counter(
            "meshsigner_root_bundle_rejections_total",
            "Pinned root bundle files refused (unreadable, not PEM, empty, non-CA); the previous bundle stays active",
            registry=registry,
        )
