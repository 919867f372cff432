"""Why a request was refused, as types; ``signer/status.py`` maps them to gRPC codes in one table.

    RequestRejected
    ├── AuthenticationFailed   no/invalid token, wrong clusterid          → UNAUTHENTICATED
    ├── CsrRejected            malformed CSR, forbidden key or extension  → INVALID_ARGUMENT
    ├── NotPermitted           identity or impersonation not allowed      → PERMISSION_DENIED
    ├── Overloaded             over the in-flight budget                  → RESOURCE_EXHAUSTED
    └── TemporarilyUnavailable backend, JWKS or policy set not available  → UNAVAILABLE

``reason`` is a short code for metrics and the client; ``detail`` goes to the server log only, unless a policy set
chose to tell callers more (``client_message``, policy settings ``clientMessages: Detailed``).
"""

from __future__ import annotations


class RequestRejected(Exception):
    def __init__(self, reason: str, detail: str = "", *, client_message: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.client_message = client_message  # what the caller may see; the reason code when None


class AuthenticationFailed(RequestRejected):
    pass


class CsrRejected(RequestRejected):
    pass


class NotPermitted(RequestRejected):
    pass


class Overloaded(RequestRejected):
    pass


class TemporarilyUnavailable(RequestRejected):
    pass


class StartupError(RuntimeError):
    """``serve`` cannot start; the message says what to fix (not a request refusal)."""
