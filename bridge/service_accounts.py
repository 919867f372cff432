"""Service accounts, cluster-wide, from one list+watch: which ``namespace/name`` exists now, and with which UID.

Offline token verification (``--authenticator jwks`` in a cluster) cannot see deletions: a token stays valid by its
signature until it expires. This index lets the authenticator refuse a token whose service account was deleted (or
deleted and recreated: another UID) as soon as the watch reports it, the way a TokenReview would. Each object is
cut down to its UID on arrival.

:meth:`ServiceAccountIndex.uid` answers ``None`` for an unknown account; whether that means "refuse" or "not known
yet" (``synced``) is the signer's decision.
"""

from __future__ import annotations

from typing import Any

from bridge.kube import SERVICE_ACCOUNTS, ListWatch, WatchSource


def service_account_key(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(``namespace/name``, UID), or None for an object without namespace, name or UID."""
    metadata = obj.get("metadata") or {}
    namespace, name, uid = (str(metadata.get(key) or "") for key in ("namespace", "name", "uid"))
    if not (namespace and name and uid):
        return None
    return f"{namespace}/{name}", uid


class ServiceAccountIndex:
    """``namespace/name`` → UID. Not thread-safe; fed and read on the event loop only."""

    def __init__(self) -> None:
        self._uids: dict[str, str] = {}
        self.synced = False

    def __len__(self) -> int:
        return len(self._uids)

    def replace_all(self, objects: list[dict[str, Any]]) -> None:
        self._uids = dict(key for key in map(service_account_key, objects) if key is not None)
        self.synced = True

    def upsert(self, obj: dict[str, Any]) -> None:
        key = service_account_key(obj)
        if key is not None:
            self._uids[key[0]] = key[1]

    def remove(self, obj: dict[str, Any]) -> None:
        """Forget the account, unless the name now belongs to another UID (a late event of an earlier one)."""
        key = service_account_key(obj)
        if key is not None and self._uids.get(key[0]) == key[1]:
            del self._uids[key[0]]

    def uid(self, namespace: str, name: str) -> str | None:
        return self._uids.get(f"{namespace}/{name}")


class ServiceAccountCache(ServiceAccountIndex):
    """The index fed by one cluster-wide ListWatch; ``ready`` (for /readyz) once the first list has arrived."""

    def __init__(self, kube: WatchSource) -> None:
        super().__init__()
        self.watch = ListWatch(kube, SERVICE_ACCOUNTS, None, self, name="serviceaccounts")

    @property
    def ready(self) -> bool:
        return self.synced

    @property
    def reason(self) -> str:
        return "" if self.synced else "service account list not received yet"

    def on_relist(self, objects: list[dict[str, Any]]) -> None:
        self.replace_all(objects)

    def on_event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            self.remove(obj)
        else:
            self.upsert(obj)


__all__ = ["ServiceAccountCache", "ServiceAccountIndex", "service_account_key"]
