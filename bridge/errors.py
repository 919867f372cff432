"""Errors of the signing backends; each says whether retrying can help.

BackendError
├── BackendUnavailable   retry may help: API down, issuer not ready, timeout       → UNAVAILABLE
├── IssuerDenied         an approver denied the request                             → PERMISSION_DENIED
└── IssuerFailed         deterministic failure: invalid request, chain not trusted → FAILED_PRECONDITION
"""

from __future__ import annotations


class BackendError(Exception):
    retryable = False

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class BackendUnavailable(BackendError):
    retryable = True


class IssuerDenied(BackendError):
    pass


class IssuerFailed(BackendError):
    pass
