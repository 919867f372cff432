"""The one table from refusal types to gRPC status codes (most specific first)."""

from __future__ import annotations

import grpc

from bridge.errors import BackendError, BackendUnavailable, IssuerDenied, IssuerFailed
from signer.errors import (
    AuthenticationFailed,
    CsrRejected,
    NotPermitted,
    Overloaded,
    RequestRejected,
    TemporarilyUnavailable,
)

_REJECTION_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (AuthenticationFailed, grpc.StatusCode.UNAUTHENTICATED),
    (CsrRejected, grpc.StatusCode.INVALID_ARGUMENT),
    (NotPermitted, grpc.StatusCode.PERMISSION_DENIED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TemporarilyUnavailable, grpc.StatusCode.UNAVAILABLE),
    (IssuerDenied, grpc.StatusCode.PERMISSION_DENIED),
    (IssuerFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_for(error: Exception) -> grpc.StatusCode:
    """The code for a refusal; an unexpected exception is a bug and deliberately INTERNAL."""
    for error_type, code in _REJECTION_CODES:
        if isinstance(error, error_type):
            return code
    if isinstance(error, RequestRejected | BackendError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL
