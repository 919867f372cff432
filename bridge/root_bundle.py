"""The mesh roots every issued chain must lead to, and the bundle sent last in every answer.

Pinned (``--root-ca-file``): read at start (unusable file → start-up error), then re-read when its content changes
(Kubernetes' atomic symlink swap included: the file is compared by content, not by inode). A new file that is
unreadable, not PEM, empty or holds a non-CA certificate is refused and the previous bundle kept (robustness J5);
the refusal is logged and counted once per distinct bad content (or read error), not at every check.
A bundle may hold several roots, for rotation.

Not pinned: trust on first use. The bundle is whatever ``status.ca`` the issuer reported for the serving
certificate, adopted at each serving issuance (istio-csr's behaviour) once the serving chain verifies against it
(the backend checks that before calling :meth:`RootBundle.adopt`); anyone able to write that status can make
meshsigner distribute their CA. ``serve`` warns loudly at start in that mode.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from cryptography import x509
from loguru import logger

from bridge.certificates import certificates_pem, is_ca, load_bundle
from bridge.metrics import BridgeMetrics
from clocks import Clock, SystemClock, sleep_unless_stopped

MAX_BUNDLE_BYTES = 330 * 1024  # cert-manager's bound for a CA bundle
MAX_ROOTS = 50


def parse_roots(data: bytes, *, what: str) -> tuple[x509.Certificate, ...]:
    """Raises ValueError unless ``data`` is a bounded PEM bundle of CA certificates."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise ValueError(f"{what}: {len(data)} bytes is over the {MAX_BUNDLE_BYTES}-byte bound")
    certificates = load_bundle(data, what=what)
    if len(certificates) > MAX_ROOTS:
        raise ValueError(f"{what}: {len(certificates)} certificates is over the bound of {MAX_ROOTS}")
    for certificate in certificates:
        if not is_ca(certificate):
            raise ValueError(f"{what}: {certificate.subject.rfc4514_string()} is not a CA certificate")
    return tuple(certificates)


class RootBundle:
    def __init__(
        self, path: str | Path | None, metrics: BridgeMetrics | None = None, *, clock: Clock | None = None
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self.path = Path(path) if path else None
        self._metrics = metrics
        self._roots: tuple[x509.Certificate, ...] = ()
        self._pem = ""
        self._digest = b""  # of the active bundle
        self._rejected: bytes | str | None = None  # the last refused content's digest, or the last read error
        if self.path is not None and not self.reload():
            raise ValueError(f"--root-ca-file {self.path}: no usable root bundle (see the log above)")

    @property
    def pinned(self) -> bool:
        return self.path is not None

    @property
    def ready(self) -> bool:
        return bool(self._roots)

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        return self._roots

    @property
    def pem(self) -> str:
        return self._pem

    def _activate(self, roots: tuple[x509.Certificate, ...], digest: bytes) -> None:
        self._roots, self._pem, self._digest = roots, certificates_pem(roots), digest

    def _reject(self, key: bytes | str, exc: Exception) -> None:
        """Log and count a refused file once: the same bad content (or read error) is not reported every tick."""
        if key == self._rejected:
            return
        self._rejected = key
        if self._metrics is not None:
            self._metrics.root_bundle_rejections.inc()
        logger.bind(event="root_bundle_rejected", path=str(self.path)).error(
            "root bundle not loaded, keeping the {} current roots: {}", len(self._roots), exc
        )

    def reload(self) -> bool:
        """Re-read the pinned file; True when a new bundle became active."""
        assert self.path is not None
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            self._reject(f"{type(exc).__name__}: {exc}", exc)
            return False
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            self._rejected = None  # back to the active content: a later bad file is reported again
            return False
        if digest == self._rejected:
            return False  # refused already; nothing changed since
        try:
            roots = parse_roots(data, what=str(self.path))
        except ValueError as exc:
            self._reject(digest, exc)
            return False
        self._rejected = None
        self._activate(roots, digest)
        logger.bind(event="root_bundle_loaded", path=str(self.path), roots=len(roots)).info(
            "pinned root bundle loaded: {}", "; ".join(r.subject.rfc4514_string() for r in roots)
        )
        return True

    def adopt(self, ca_pem: bytes) -> None:
        """Trust on first use (no pinned file): take the issuer-reported CA; refuses garbage."""
        if self.pinned:
            return
        digest = hashlib.sha256(ca_pem).digest()
        if digest == self._digest:
            return
        roots = parse_roots(ca_pem, what="status.ca of the serving CertificateRequest")
        self._activate(roots, digest)
        logger.bind(event="root_bundle_adopted", roots=len(roots)).warning(
            "UNPINNED root bundle adopted from the issuer's status.ca (trust on first use): {}",
            "; ".join(r.subject.rfc4514_string() for r in roots),
        )

    async def watch(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        if self.path is None:
            return
        while not await sleep_unless_stopped(self._clock, stop, interval):
            self.reload()
