"""The cluster's service-account issuer and keys, read from the API server's OIDC discovery.

``/.well-known/openid-configuration`` names the issuer; ``/openid/v1/jwks`` holds the public keys the API server
verifies service-account tokens with (read from the API server itself, not from the document's ``jwks_uri``, which
may name an address meshsigner cannot reach). Both are readable by every service account through the default
``system:service-account-issuer-discovery`` binding.

Reads happen at start (retried with backoff until one succeeds), every ``refresh_interval`` seconds after that,
and when a token names an unknown ``kid`` (a key rotation), at most once per ``min_refresh_interval``: a flood of
invented key ids costs one read per interval, shared by every caller waiting for it. A failed read keeps the last
good issuer and keys. ``--token-issuer``, when set, wins over the discovered issuer (a difference is logged).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from loguru import logger
from prometheus_client import CollectorRegistry, Counter

from bridge.kube import KubeError
from clocks import Clock, sleep_unless_stopped
from signer.auth.jwks import jwks_keys
from signer.auth.jws import PublicKey

CONFIGURATION_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"
REFRESH_INTERVAL_SECONDS = 300.0
MIN_REFRESH_INTERVAL_SECONDS = 10.0
RETRY_START, RETRY_MAX = 1.0, 30.0


class DiscoverySource(Protocol):
    """What the key source needs from the Kubernetes seam (KubeClient is one)."""

    async def get_discovery_document(self, path: str) -> dict[str, Any]: ...


class KeyRefreshMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.refreshes = Counter(
            "meshsigner_cluster_jwks_refreshes_total",
            "Reads of the API server's OIDC discovery, by trigger (start, periodic, unknown_kid) and result",
            ["trigger", "result"],
            registry=registry,
        )
        self.refresh_skipped = Counter(
            "meshsigner_cluster_jwks_refreshes_skipped_total",
            "Unknown-kid refreshes not made because one was made less than the minimum interval ago",
            registry=registry,
        )


class ClusterIssuerKeys:
    def __init__(
        self,
        source: DiscoverySource,
        *,
        clock: Clock,
        metrics: KeyRefreshMetrics,
        configured_issuer: str = "",
        refresh_interval: float = REFRESH_INTERVAL_SECONDS,
        min_refresh_interval: float = MIN_REFRESH_INTERVAL_SECONDS,
    ) -> None:
        self._source = source
        self._clock = clock
        self._metrics = metrics
        self._configured_issuer = configured_issuer
        self._refresh_interval = refresh_interval
        self._min_refresh_interval = min_refresh_interval
        self._issuer: str | None = configured_issuer or None
        self._keys: dict[str, PublicKey] | None = None
        self._fingerprint = ""
        self.generation = 0  # bumped whenever the key set changes (caches of verified tokens start again)
        self._last_attempt: float | None = None
        self._in_flight: asyncio.Task[bool] | None = None

    @property
    def issuer(self) -> str | None:
        return self._issuer

    @property
    def keys(self) -> dict[str, PublicKey] | None:
        return self._keys

    @property
    def ready(self) -> bool:
        return self._keys is not None and self._issuer is not None

    @property
    def reason(self) -> str:
        return "" if self.ready else "the cluster's OIDC discovery has not been read yet"

    async def refresh(self, trigger: str = "periodic") -> bool:
        """Read the issuer and keys once; True when the key set changed. A failure keeps what was known."""
        self._last_attempt = self._clock.monotonic()
        try:
            configuration = await self._source.get_discovery_document(CONFIGURATION_PATH)
            document = await self._source.get_discovery_document(JWKS_PATH)
            keys = jwks_keys(document)
        except (KubeError, ValueError) as exc:
            self._metrics.refreshes.labels(trigger, "error").inc()
            logger.bind(event="cluster_jwks_refresh_failed", trigger=trigger).warning(
                "cannot read the API server's OIDC discovery, keeping {} keys: {}", len(self._keys or {}), exc
            )
            return False
        discovered = configuration.get("issuer")
        if not isinstance(discovered, str) or not discovered:
            self._metrics.refreshes.labels(trigger, "error").inc()
            logger.bind(event="cluster_jwks_refresh_failed", trigger=trigger).warning(
                "the OIDC discovery document names no issuer"
            )
            return False
        if self._configured_issuer and discovered != self._configured_issuer:
            logger.bind(event="token_issuer_differs").warning(
                "--token-issuer {!r} differs from the API server's discovered issuer {!r}; using --token-issuer",
                self._configured_issuer,
                discovered,
            )
        self._issuer = self._configured_issuer or discovered
        fingerprint = json.dumps(document, sort_keys=True)
        changed = fingerprint != self._fingerprint
        self._keys, self._fingerprint = keys, fingerprint
        if changed:
            self.generation += 1
        self._metrics.refreshes.labels(trigger, "changed" if changed else "unchanged").inc()
        if changed:
            logger.bind(event="cluster_jwks_loaded", keys=len(keys), issuer=self._issuer).info(
                "service-account keys read from the API server's OIDC discovery"
            )
        return changed

    async def refresh_for_unknown_kid(self) -> bool:
        """A token names a key we do not know: re-read, unless a read started less than the minimum interval ago.
        Concurrent callers share one read."""
        if self._in_flight is not None:
            return await asyncio.shield(self._in_flight)
        now = self._clock.monotonic()
        if self._last_attempt is not None and now - self._last_attempt < self._min_refresh_interval:
            self._metrics.refresh_skipped.inc()
            return False
        task = asyncio.get_running_loop().create_task(self.refresh("unknown_kid"), name="cluster-jwks-refresh")
        self._in_flight = task
        task.add_done_callback(self._refresh_done)
        return await asyncio.shield(task)

    def _refresh_done(self, task: asyncio.Task[bool]) -> None:
        if self._in_flight is task:
            self._in_flight = None
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone

    async def run(self, stop: asyncio.Event) -> None:
        """Read at start (retrying with backoff until a read succeeds), then every refresh interval, until stop."""
        backoff = RETRY_START
        trigger = "start"
        while not stop.is_set():
            await self.refresh(trigger)
            if self.ready:
                trigger, wait, backoff = "periodic", self._refresh_interval, RETRY_START
            else:
                wait, backoff = backoff, min(backoff * 2, RETRY_MAX)
            if await sleep_unless_stopped(self._clock, stop, wait):
                return
