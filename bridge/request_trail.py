"""What one workload request left behind on its way through the bridge, for the audit mirror and the annotations:
its decision id and CSR (noted by the front door), the API object it created and the chain it was issued.

A request is one asyncio task; its trail lives in a context variable, the mechanism ``logger.contextualize`` uses
for the request id. A context variable holds per-task values, not process state. A task inherits its creator's
context, so a trail also records the task it belongs to: a request task never reuses a trail it inherited (e.g.
the one the serving certificate's issuance left in the task that then started the gRPC server).

The front door calls :func:`begin_request` once per call, right after parsing the CSR (one line in
``signer/service.py``); the backends and :class:`bridge.audit_mirror.TrailRecordingBackend` fill in the rest.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class RequestTrail:
    decision_id: str = ""
    csr_pem: str = ""
    object_name: str = ""  # the CertificateRequest / CertificateSigningRequest this request created
    chain_pem: str = ""  # the issued chain (leaf first), PEM
    task: object = None  # the asyncio task this trail belongs to


_TRAIL: ContextVar[RequestTrail | None] = ContextVar("meshsigner_request_trail", default=None)


def begin_request(decision_id: str, csr_pem: str) -> None:
    """A new request starts in this task: its decision id (the front door's request id) and the CSR as received."""
    _TRAIL.set(RequestTrail(decision_id=decision_id, csr_pem=csr_pem, task=asyncio.current_task()))


def current_trail() -> RequestTrail:
    """This task's trail (made empty on first use: a request the front door did not announce)."""
    task = asyncio.current_task()
    trail = _TRAIL.get()
    if trail is None or trail.task is not task:
        trail = RequestTrail(task=task)
        _TRAIL.set(trail)
    return trail
