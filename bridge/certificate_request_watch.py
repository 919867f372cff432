"""One shared, label-selected CertificateRequest watch that resolves every in-flight request.

No GET polling, no per-request watch, no timer: each request registers a future under its object's name after the
create returned (name and UID known), and the watch resolves it on the first terminal event for that UID. Events
that arrive before the registration (the create's answer can lose the race with the watch) are kept in a small
bounded cache and checked on registration. After a relist (410 Gone) the listed objects resolve waiters too, so a
broken watch loses nothing. Objects are matched by UID, never only by name.

Terminal states, as cert-manager writes them:
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
from dataclasses import dataclass

from bridge.errors import BackendError, BackendUnavailable, IssuerDenied, IssuerFailed
from bridge.kube import CERTIFICATE_REQUESTS, ListWatch, Obj, WatchSource

LABEL_KEY = "app.kubernetes.io/managed-by"
LABEL_VALUE = "meshsigner"
LABEL_SELECTOR = f"{LABEL_KEY}={LABEL_VALUE}"
EARLY_CACHE_ENTRIES = 4096
MAX_MESSAGE = 200


@dataclass(frozen=True, slots=True)
class Issued:
    certificate_pem: bytes
    ca_pem: bytes


def _conditions(obj: Obj) -> dict[str, Obj]:
    return {str(c.get("type")): c for c in (obj.get("status") or {}).get("conditions") or []}


def _decode(value: object) -> bytes:
    if not value:
        return b""
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        return b""


def terminal_state(obj: Obj) -> Issued | BackendError | None:
    """What a CertificateRequest says about its end: the issued material, the error to answer, or None (pending)."""
    status = obj.get("status") or {}
    certificate = _decode(status.get("certificate"))
    if certificate:
        return Issued(certificate, _decode(status.get("ca")))
    conditions = _conditions(obj)

    def message(condition: Obj) -> str:
        return str(condition.get("message") or condition.get("reason") or "")[:MAX_MESSAGE]

    denied = conditions.get("Denied")
    if denied and denied.get("status") == "True":
        return IssuerDenied("CERTIFICATE_REQUEST_DENIED", message(denied))
    invalid = conditions.get("InvalidRequest")
    if invalid and invalid.get("status") == "True":
        return IssuerFailed("CERTIFICATE_REQUEST_INVALID", message(invalid))
    ready = conditions.get("Ready")
    if ready and ready.get("status") == "False" and ready.get("reason") == "Failed":
        return BackendUnavailable("CERTIFICATE_REQUEST_FAILED", message(ready))
    return None


def _key(obj: Obj) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("name") or ""), str(metadata.get("uid") or "")


class CertificateRequestWatch:
    def __init__(self, kube: WatchSource, namespace: str) -> None:
        self._waiters: dict[str, tuple[str, asyncio.Future[Issued]]] = {}
        self._early: OrderedDict[str, Obj] = OrderedDict()
        self._watch = ListWatch(
            kube, CERTIFICATE_REQUESTS, namespace, self, label_selector=LABEL_SELECTOR, name="certificaterequests"
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
        outcome: Issued | BackendError | None = terminal_state(obj)
        if outcome is None and deleted:
            outcome = BackendUnavailable("CERTIFICATE_REQUEST_DELETED", "deleted before it was signed")
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
