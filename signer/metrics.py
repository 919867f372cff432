"""Prometheus metrics of the front door, registered on a registry the caller owns (no global registry).

With ``--workers`` above 1 the processes' samples are summed by the first process (signer/worker_processes.py);
each gauge says how: calls in flight add up over the live processes, the serving-certificate expiry is the
earliest of theirs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "meshsigner_csr_requests_total",
            "CreateCertificate calls by outcome (gRPC code) and reason",
            ["code", "reason"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "meshsigner_csr_request_duration_seconds",
            "End-to-end CreateCertificate latency",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.backend_seconds = Histogram(
            "meshsigner_signer_backend_duration_seconds",
            "Time the signing backend took",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.issued_duration = Histogram(
            "issued_certificate_duration_seconds",
            "Lifetime of the workload certificates issued (notAfter - issue time)",
            buckets=(600, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 30 * 86400),
            registry=registry,
        )
        self.in_flight = Gauge(
            "meshsigner_csr_in_flight",
            "CreateCertificate calls being served",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.serving_certificate_expiry = Gauge(
            "meshsigner_serving_certificate_not_after_seconds",
            "notAfter of the gRPC serving certificate (Unix time; the earliest over the worker processes)",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.decision_records_dropped = Counter(
            "meshsigner_decision_records_dropped_total",
            "Decision records not written because the writer fell too far behind",
            registry=registry,
        )


class AuthMetrics:
    """TokenReview outcomes and cache use."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.token_reviews = Counter(
            "meshsigner_token_reviews_total",
            "TokenReviews sent, by result (authenticated, rejected, unavailable)",
            ["result"],
            registry=registry,
        )
        self.token_review_cache = Counter(
            "meshsigner_token_review_cache_total",
            "Token lookups by cache result (hit, shared = joined an in-flight review, miss)",
            ["result"],
            registry=registry,
        )
