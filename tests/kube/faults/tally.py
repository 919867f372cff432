"""Counting a fault scenario the way docs/faults.md reports it: requests sent, OK, refused by code, lost (no
answer before the client's own deadline, which is set well past the server's --request-timeout) and leaked
CertificateRequests. Each scenario prints its row and, when MESHSIGNER_FAULTS_REPORT names a file, appends it
there as one JSON line (the figures in the docs come from such a file)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from google.protobuf import struct_pb2

from proto import istio_ca_pb2, istio_ca_pb2_grpc

# Codes a server may answer under a fault; anything else (INTERNAL, UNKNOWN, UNAUTHENTICATED for a valid token...)
# is a finding.
CLEAN_FAULT_CODES = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}


@dataclass
class Answer:
    code: grpc.StatusCode
    details: str
    seconds: float
    chain: list[str] = field(default_factory=list)


def call(
    stub: istio_ca_pb2_grpc.IstioCertificateServiceStub, csr: str, token: str, *, deadline: float = 30.0
) -> Answer:
    """One CreateCertificate as an Istio agent sends it; the client deadline marks a lost request."""
    request = istio_ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=3600, metadata=struct_pb2.Struct())
    started = time.perf_counter()
    try:
        response = stub.CreateCertificate(request, metadata=[("authorization", f"Bearer {token}")], timeout=deadline)
    except grpc.RpcError as error:
        return Answer(error.code(), error.details() or "", time.perf_counter() - started)
    return Answer(grpc.StatusCode.OK, "", time.perf_counter() - started, list(response.cert_chain))


def lost(answer: Answer) -> bool:
    """The client gave up waiting: the server never answered this request."""
    return answer.code == grpc.StatusCode.DEADLINE_EXCEEDED


def burst(
    send: Callable[[int], Answer],
    total: int,
    concurrency: int,
    on_progress: Callable[[int], None] | None = None,
) -> list[Answer]:
    """``total`` calls of ``send(index)`` with at most ``concurrency`` at once; ``on_progress(done)`` after each."""
    done = [0]
    lock = threading.Lock()

    def one(index: int) -> Answer:
        answer = send(index)
        with lock:
            done[0] += 1
            count = done[0]
        if on_progress is not None:
            on_progress(count)
        return answer

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(total)))


@dataclass
class Tally:
    scenario: str
    answers: list[Answer] = field(default_factory=list)
    leaked: int = -1  # CertificateRequests left after the sweep; -1 = not applicable (no cluster objects)
    notes: str = ""

    def add(self, answers: list[Answer]) -> None:
        self.answers.extend(answers)

    @property
    def codes(self) -> Counter[str]:
        return Counter(a.code.name for a in self.answers if not lost(a))

    @property
    def lost(self) -> int:
        return sum(1 for a in self.answers if lost(a))

    def refused_reasons(self) -> Counter[str]:
        """Refusals by code and the reason code the server put first in its details."""
        out: Counter[str] = Counter()
        for a in self.answers:
            if a.code != grpc.StatusCode.OK and not lost(a):
                out[f"{a.code.name} {a.details.rsplit(' (request', 1)[0][:70]}"] += 1
        return out

    def row(self) -> dict:
        codes = self.codes
        return {
            "scenario": self.scenario,
            "sent": len(self.answers),
            "ok": codes.get("OK", 0),
            "refused": {k: v for k, v in sorted(codes.items()) if k != "OK"},
            "refused_reasons": dict(sorted(self.refused_reasons().items())),
            "lost": self.lost,
            "leaked": self.leaked,
            "max_seconds": round(max((a.seconds for a in self.answers), default=0.0), 2),
            "notes": self.notes,
        }

    def report(self) -> dict:
        row = self.row()
        print(f"\nFAULT {json.dumps(row)}")
        target = os.environ.get("MESHSIGNER_FAULTS_REPORT")
        if target:
            with open(target, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        return row
