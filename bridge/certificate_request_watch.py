"""One shared, label-selected watch that resolves every in-flight request: :class:`RequestWatch`, used for
cert-manager CertificateRequests (:class:`CertificateRequestWatch`) and Kubernetes CertificateSigningRequests
(``bridge.kubernetes_csr``), each with its own reading of an object's terminal state.

No GET polling, no per-request watch, no timer: each request registers a future under its object's name after the
create returned (name and UID known), and the watch resolves it on the first terminal event for that UID. Events
that arrive before the registration (the create's answer can lose the race with the watch) are kept in a small
bounded cache and checked on registration. After a relist (410 Gone) the listed objects resolve waiters too, so a
broken watch loses nothing. Objects are matched by UID, never only by name.

Terminal states of a CertificateRequest, as cert-manager writes them (:func:`terminal_state`):
- ``status.certificate`` non-empty → issued (Ready=True not required, like istio-csr);
- ``Denied=True`` → denied (PERMISSION_DENIED);
- ``InvalidRequest=True`` → invalid, deterministic (FAILED_PRECONDITION: a retry would make a new object to fail);
- ``Ready=False`` with reason ``Failed`` → failed (UNAVAILABLE: an issuer outage may pass);
- deleted while awaited → UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import base64
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bridge.errors import BackendError, BackendUnavailable, IssuerDenied, IssuerFailed
from bridge.kube import CERTIFICATE_REQUESTS, ListWatch, Obj, Resource, WatchSource

LABEL_KEY = "app.kubernetes.io/managed-by"
LABEL_VALUE = "meshsigner"
LABEL_SELECTOR = f"{LABEL_KEY}={LABEL_VALUE}"
EARLY_CACHE_ENTRIES = 4096
MAX_MESSAGE = 200


@dataclass(frozen=True, slots=True)
class Issued:
    certificate_pem: bytes
    ca_pem: bytes


TerminalState = Callable[[Obj], "Issued | BackendError | None"]


def conditions(obj: Obj) -> dict[str, Obj]:
    """An object's ``status.conditions`` by type."""
    return {str(c.get("type")): c for c in (obj.get("status") or {}).get("conditions") or []}


def condition_message(condition: Obj) -> str:
    """A condition's message (else its reason), bounded."""
    return str(condition.get("message") or condition.get("reason") or "")[:MAX_MESSAGE]


def condition_time(now: datetime) -> str:
    """A condition's timestamp as the API writes one (RFC 3339 UTC, whole seconds)."""
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def decode_base64(value: object) -> bytes:
    """A base64 field (``status.certificate``), or b"" when absent or not base64."""
    if not value:
        return b""
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        return b""


def terminal_state(obj: Obj) -> Issued | BackendError | None:
    """What a CertificateRequest says about its end: the issued material, the error to answer, or None (pending)."""
    status = obj.get("status") or {}
    certificate = decode_base64(status.get("certificate"))
    if certificate:
        return Issued(certificate, decode_base64(status.get("ca")))
    by_type = conditions(obj)
    denied = by_type.get("Denied")
    if denied and denied.get("status") == "True":
        return IssuerDenied("CERTIFICATE_REQUEST_DENIED", condition_message(denied))
    invalid = by_type.get("InvalidRequest")
    if invalid and invalid.get("status") == "True":
        return IssuerFailed("CERTIFICATE_REQUEST_INVALID", condition_message(invalid))
    ready = by_type.get("Ready")
    if ready and ready.get("status") == "False" and ready.get("reason") == "Failed":
        return BackendUnavailable("CERTIFICATE_REQUEST_FAILED", condition_message(ready))
    return None


def _key(obj: Obj) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("name") or ""), str(metadata.get("uid") or "")


class RequestWatch:
    """The shared watch over meshsigner's own objects of ``resource`` (label-selected, and optionally narrowed by a
    field selector), resolving registered waiters with what ``terminal_state`` reads from each object."""

    def __init__(
        self,
        kube: WatchSource,
        resource: Resource,
        namespace: str | None,
        terminal_state: TerminalState,
        *,
        label_selector: str = LABEL_SELECTOR,
        field_selector: str = "",
        deleted_reason: str = "CERTIFICATE_REQUEST_DELETED",
        name: str = "",
    ) -> None:
        self._waiters: dict[str, tuple[str, asyncio.Future[Issued]]] = {}
        self._early: OrderedDict[str, Obj] = OrderedDict()
        self._terminal_state = terminal_state
        self._deleted_reason = deleted_reason
        self._watch = ListWatch(
            kube,
            resource,
            namespace,
            self,
            label_selector=label_selector,
            field_selector=field_selector,
            name=name or resource.plural,
        )

    @property
    def ready(self) -> bool:
        return self._watch.synced

    @property
    def connected(self) -> bool:
        return self._watch.connected

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def run(self, stop: asyncio.Event) -> None:
        await self._watch.run(stop)

    def register(self, name: str, uid: str) -> asyncio.Future[Issued]:
        """A future resolved by the first terminal state of object ``name`` with ``uid``; drop it with
        :meth:`forget` when no longer awaited."""
        future: asyncio.Future[Issued] = asyncio.get_running_loop().create_future()
        self._waiters[name] = (uid, future)
        early = self._early.pop(name, None)
        if early is not None:
            self._resolve(early, deleted=False)
        return future

    def forget(self, name: str) -> None:
        self._waiters.pop(name, None)

    def _resolve(self, obj: Obj, *, deleted: bool) -> None:
        name, uid = _key(obj)
        entry = self._waiters.get(name)
        if entry is None:
            if deleted:
                self._early.pop(name, None)
            else:
                self._early[name] = obj
                self._early.move_to_end(name)
                if len(self._early) > EARLY_CACHE_ENTRIES:
                    self._early.popitem(last=False)
            return
        expected_uid, future = entry
        if uid != expected_uid or future.done():
            return
        outcome: Issued | BackendError | None = self._terminal_state(obj)
        if outcome is None and deleted:
            outcome = BackendUnavailable(self._deleted_reason, "deleted before it was signed")
        if outcome is None:
            return
        del self._waiters[name]
        if isinstance(outcome, Issued):
            future.set_result(outcome)
        else:
            future.set_exception(outcome)

    # WatchHandler
    def on_relist(self, objects: list[Obj]) -> None:
        self._early.clear()
        for obj in objects:
            self._resolve(obj, deleted=False)

    def on_event(self, kind: str, obj: Obj) -> None:
        self._resolve(obj, deleted=kind == "DELETED")


class CertificateRequestWatch(RequestWatch):
    """The watch over meshsigner's CertificateRequests in ``namespace``."""

    def __init__(self, kube: WatchSource, namespace: str) -> None:
        super().__init__(kube, CERTIFICATE_REQUESTS, namespace, terminal_state, name="certificaterequests")
