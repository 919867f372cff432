"""The seam's error classes, and the translation of what the client library or the network raised into them.

Only two kinds of failure are translated, because only they say something about the API server::

    KubeError
    ├── KubeUnavailable   connection refused/reset, timeout, TLS failure, 408, 429, 5xx  (retry may help)
    ├── KubeForbidden     401/403 (RBAC or credentials)
    ├── KubeNotFound      404
    ├── KubeConflict      409
    ├── KubeGone          410 (watch history compacted: relist)
    └── KubeInvalid       400/422 (the request itself is wrong)

Anything else (TypeError, AttributeError, a KeyError in our own code) is a bug, not an outage: it propagates
unchanged, so it is logged with its traceback instead of becoming an endless "API unavailable" retry loop.
"""

from __future__ import annotations

import json
from typing import Any

import urllib3.exceptions
from kubernetes.client.rest import ApiException


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class KubeUnavailable(KubeError):
    pass


class KubeForbidden(KubeError):
    pass


class KubeNotFound(KubeError):
    pass


class KubeConflict(KubeError):
    pass


class KubeGone(KubeError):
    pass


class KubeInvalid(KubeError):
    pass


_ERROR_BY_STATUS: dict[int, type[KubeError]] = {
    401: KubeForbidden,
    403: KubeForbidden,
    408: KubeUnavailable,  # the server timed the request out: retrying may well succeed
    404: KubeNotFound,
    409: KubeConflict,
    410: KubeGone,
    400: KubeInvalid,
    422: KubeInvalid,
}

# What the network can raise under the client: every urllib3 error (connection, protocol, read timeout, TLS) and
# the OS-level ones it sometimes lets through (ConnectionError, TimeoutError and ssl.SSLError are all OSError).
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (urllib3.exceptions.HTTPError, OSError)


def _status_message(body: Any) -> str:
    """The ``message`` of a Kubernetes Status body, else the body itself (bounded)."""
    try:
        return str(json.loads(body).get("message", ""))[:300]
    except (TypeError, ValueError, AttributeError):
        return str(body or "")[:300]


def error_for_status(status: int, message: str) -> KubeError:
    """The seam's error for an HTTP status (0: no status, the request never got an answer)."""
    if status in _ERROR_BY_STATUS:
        kind = _ERROR_BY_STATUS[status]
    elif status == 429 or status >= 500 or not status:
        kind = KubeUnavailable
    else:
        kind = KubeInvalid
    return kind(status, message)


def as_kube_error(exc: BaseException) -> KubeError | None:
    """The seam's error for an API or transport failure; None for anything else (a bug: let it propagate)."""
    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        return error_for_status(status, _status_message(exc.body) or str(exc.reason or ""))
    if isinstance(exc, TRANSPORT_ERRORS):
        return KubeUnavailable(0, f"{type(exc).__name__}: {str(exc)[:200]}")
    return None
