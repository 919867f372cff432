"""Per-caller limits on authentication failures: a peer address that keeps failing is slowed down, others are not.

Each peer address has a token bucket of failures (``burst`` saved, ``rate`` a second regained); an authentication
failure takes one. A peer whose bucket is empty is refused with RESOURCE_EXHAUSTED before its token is even looked
at, until the bucket refills; successful calls take nothing, so a workload that authenticates never notices. The
buckets live in an LRU of ``max_peers`` addresses (10 000 by default, about a megabyte): a peer evicted by newer
ones starts again with a full bucket, so memory stays bounded whatever the number of addresses.

The address comes from gRPC's peer string (``ipv4:10.0.0.7:51234``, ``ipv6:[fd00::7]:51234``) without the port:
every connection from one host shares a bucket. The current call's peer travels in a context variable set by the
service around each call (:func:`calling_peer`), so authenticators keep their one-argument interface.

Metrics: ``meshsigner_auth_peer_limited_total{peer}`` names the address, for at most ``METRIC_PEERS`` addresses
(the least recently limited lose their series), and a log line names it at most once per 5 s.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from contextvars import ContextVar
from urllib.parse import unquote

from loguru import logger
from prometheus_client import CollectorRegistry, Counter

from clocks import Clock
from signer.errors import Overloaded
from signer.logs import RateLimiter

MAX_PEERS = 10_000
METRIC_PEERS = 64
_current_peer: ContextVar[str] = ContextVar("meshsigner_calling_peer", default="")


def peer_address(grpc_peer: str) -> str:
    """The host part of gRPC's peer string; the whole string for other transports (``unix:...``)."""
    peer = unquote(grpc_peer or "")
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        return host.strip("[]") or rest
    return peer


class calling_peer:  # a context manager; a class, as it runs on every call
    """Make ``grpc_peer`` (``context.peer()``) the current call's peer while the block runs."""

    __slots__ = ("_peer", "_token")

    def __init__(self, grpc_peer: str) -> None:
        self._peer = peer_address(grpc_peer)

    def __enter__(self) -> None:
        self._token = _current_peer.set(self._peer)

    def __exit__(self, *_: object) -> None:
        _current_peer.reset(self._token)


def current_peer() -> str:
    return _current_peer.get()


class PeerLimitMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.limited = Counter(
            "meshsigner_auth_peer_limited_total",
            f"Calls refused (RESOURCE_EXHAUSTED) because their peer address failed authentication too often; "
            f"series for the {METRIC_PEERS} most recently limited addresses",
            ["peer"],
            registry=registry,
        )
        self.failures = Counter(
            "meshsigner_auth_peer_failures_total",
            "Authentication failures charged to a peer address's bucket",
            registry=registry,
        )


class PeerRefusalLimiter:
    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        clock: Clock,
        metrics: PeerLimitMetrics,
        max_peers: int = MAX_PEERS,
    ) -> None:
        if rate <= 0 or burst < 1 or max_peers < 1:
            raise ValueError("the refusal limit needs a positive rate, burst and peer count")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._metrics = metrics
        self._max_peers = max_peers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # peer → (failures left, at)
        self._labelled: OrderedDict[str, None] = OrderedDict()
        self._log_limit = RateLimiter()

    def __len__(self) -> int:
        return len(self._buckets)

    def _left(self, peer: str) -> float:
        entry = self._buckets.get(peer)
        if entry is None:
            return self._burst
        left, at = entry
        return min(self._burst, left + (self._clock.monotonic() - at) * self._rate)

    def admit(self, peer: str) -> None:
        """Raise Overloaded when ``peer`` has no failures left; a call without a known peer is not limited."""
        if not peer or self._left(peer) >= 1:
            return
        self._count_limited(peer)
        allowed, suppressed = self._log_limit.allow("peer_limited")
        if allowed:
            logger.bind(event="auth_peer_limited", peer=peer, suppressed=suppressed).warning(
                "refusing calls from {}: too many authentication failures", peer
            )
        raise Overloaded("AUTH_FAILURES_RATE_LIMITED", f"{peer}: too many authentication failures")

    def failed(self, peer: str) -> None:
        """Charge one authentication failure to ``peer``."""
        if not peer:
            return
        self._metrics.failures.inc()
        # failures of calls admitted together may overdraw the bucket; the debt is capped so that a peer's
        # lock-out never exceeds 2 x burst / rate seconds
        left = max(self._left(peer) - 1, -self._burst)
        self._buckets[peer] = (left, self._clock.monotonic())
        self._buckets.move_to_end(peer)
        while len(self._buckets) > self._max_peers:
            self._buckets.popitem(last=False)

    def _count_limited(self, peer: str) -> None:
        self._metrics.limited.labels(peer).inc()
        self._labelled[peer] = None
        self._labelled.move_to_end(peer)
        while len(self._labelled) > METRIC_PEERS:
            evicted, _ = self._labelled.popitem(last=False)
            with contextlib.suppress(KeyError):
                self._metrics.limited.remove(evicted)
