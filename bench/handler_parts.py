"""What each stage of meshsigner's CreateCertificate handler costs in-process, on one thread, without gRPC.

    python bench/handler_parts.py [--calls 2000]

CPU microseconds per call (time.process_time) for: CSR parse and checks, token check (cached and not), the
built-in policy decision, leaf build and sign, the decision record logged at INFO, plus the two cryptography
primitives under them (ECDSA P-256 verify and sign). Next to bench_vs_istiod.py's server CPU per CSR and its
no-op transport floor this splits the per-certificate cost into transport and handler parts. It calls the
product's modules directly, so it follows their names if they move.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from loguru import logger
from prometheus_client import CollectorRegistry, Counter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_vs_istiod as side_by_side

from bridge.local_ca import LocalCA
from bridge.signing import SigningRequest
from clocks import SystemClock
from policies import Caller
from policies.builtin import OwnIdentityOnly
from proto import istio_ca_pb2
from signer.auth.jwks import JwksAuthenticator
from signer.csr_checks import parse_csr
from signer.decided_request import DecidedRequest
from signer.decision_log import DecisionLog
from signer.logs import TEXT_FORMAT
from signer.metrics import ServerMetrics
from signer.serve import build_authenticator
from signer.service import CertificateService, ServiceConfig
from signer.settings import add_flags, resolve
from tests.support.csr_builder import make_csr


def per_call_us(calls: int, work: Callable[[int], object], per: int = 1) -> float:
    work(0)
    started = time.process_time()
    for index in range(calls):
        work(index)
    return (time.process_time() - started) * 1e6 / (calls * per)


class _Context:
    """What CreateCertificate reads of a grpc.aio context, for calling the handler without a server."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"), ("clusterid", "Kubernetes"))

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, code: object, details: str) -> None:
        raise RuntimeError(f"refused: {code} {details}")


def whole_handler(
    base: Path, tokens: list[str], csrs: list[str], loop: asyncio.AbstractEventLoop
) -> Callable[[int], object]:
    """The handler as ``serve`` wires it for the bench's meshsigner (local CA, JWKS, built-in rule, decision
    records at INFO), called directly: everything a certificate costs except gRPC, HTTP/2, TLS and protobuf."""
    argv = ["--signer=local", f"--local-ca-dir={base / 'ca'}", "--authenticator=jwks",
            f"--jwks-file={base / 'jwks.json'}", f"--token-issuer={side_by_side.ISSUER}"]  # fmt: skip
    parser = argparse.ArgumentParser()
    add_flags(parser)
    settings = resolve(parser.parse_args(argv), environment={})
    registry = CollectorRegistry()
    clock = SystemClock()
    authenticator, _ = build_authenticator(settings, None, registry, clock)
    metrics = ServerMetrics(registry)
    records = DecisionLog(None, to_log=True, dropped=metrics.decision_records_dropped)
    service = CertificateService(
        ServiceConfig(settings.trust_domain, settings.cluster_id, frozenset(), 30.0, 512, "local"),
        authenticator=authenticator, decider=OwnIdentityOnly(settings.trust_domain, 3600),
        backend=LocalCA.open(base / "ca"), metrics=metrics, record_decision=records, clock=clock,
    )  # fmt: skip
    requests = [
        istio_ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=3600) for csr in csrs
    ]
    contexts = [_Context(token) for token in tokens]

    async def batch(start: int) -> None:  # 20 calls at once, as a loaded server interleaves them
        await asyncio.gather(*(service.CreateCertificate(requests[(start + j) % 50], contexts[(start + j) % 50])
                               for j in range(20)))  # type: ignore[arg-type]  # fmt: skip

    def work(i: int) -> object:
        loop.run_until_complete(batch(i))
        return None

    return lambda i: [work(i * 20)] and records.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--only", default="", help="run only the rows whose name contains this text")
    options = parser.parse_args()
    calls = options.calls
    base = Path(tempfile.mkdtemp(prefix="meshsigner-parts-"))
    issuer_key = side_by_side.write_material(base)
    tokens = [entry["token"] for entry in json.loads((base / "work.json").read_text())["identities"]]
    ca = LocalCA.open(base / "ca")
    csrs = [make_csr([f"spiffe://cluster.local/ns/ns{i}/sa/sa{i}"]) for i in range(50)]
    parsed = [parse_csr(csr, validity_seconds=3600, impersonated=None, cert_signer=None) for csr in csrs]
    callers = [Caller("cluster.local", f"ns{i}", f"sa{i}") for i in range(50)]
    decider = OwnIdentityOnly("cluster.local", 3600)
    now = datetime.now(UTC)
    decisions = [
        decider.decide(callers[i], parsed[i].request, now=now, ca_not_after=ca.ca_not_after) for i in range(50)
    ]
    loop = asyncio.new_event_loop()
    authenticator = JwksAuthenticator(
        base / "jwks.json", issuer=side_by_side.ISSUER, audiences=("istio-ca",), clock=SystemClock()
    )
    logger.remove()
    logger.add(io.StringIO(), level="INFO", format=TEXT_FORMAT)  # formatted as for stderr, then discarded
    key = ec.generate_private_key(ec.SECP256R1())
    signature = key.sign(b"x" * 300, ec.ECDSA(hashes.SHA256()))

    def sign(i: int) -> object:
        p, d = parsed[i % 50], decisions[i % 50]
        assert d.not_after is not None and d.duration_seconds is not None
        request = SigningRequest(
            csr_pem=p.pem, csr=p.csr, public_key=p.public_key, uris=d.uris, dns_names=d.dns_names,
            not_after=d.not_after, duration_seconds=d.duration_seconds, identities_annotation=",".join(d.uris),
        )  # fmt: skip
        return loop.run_until_complete(ca.sign(request))

    def records(i: int, linger: float) -> object:
        """Writes 64 records through a fresh writer and waits for them: the CPU of the writer thread counts.
        One at a time: each record waits for the one before (an idle server); under load: queued together."""
        log = DecisionLog(None, to_log=True, dropped=Counter("d", "d", registry=CollectorRegistry()),
                          linger_seconds=linger)  # fmt: skip
        for j in range(64):
            log(DecidedRequest(f"{i:08x}{j:08x}", callers[j % 50], parsed[j % 50].request, decisions[j % 50]))
            if linger == 0.0:
                log.flush()
        log.close()
        return None

    def fresh_token(i: int) -> object:  # a token not seen before, so the verified-token cache misses
        return loop.run_until_complete(authenticator.authenticate(unseen[i]))

    unseen = [side_by_side.mint_token(issuer_key, f"cold{i}", "sa") for i in range(calls + 1)]
    rows = [
        ("CSR parse and checks (parse_csr)", lambda i: parse_csr(csrs[i % 50], validity_seconds=3600,
                                                                 impersonated=None, cert_signer=None)),
        ("token, cached (50 tokens repeat)", lambda i: loop.run_until_complete(
            authenticator.authenticate(tokens[i % 50]))),
        ("token, not cached (RS256 verify)", fresh_token),
        ("policy decision (built-in rule)", lambda i: decider.decide(callers[i % 50], parsed[i % 50].request,
                                                                     now=now, ca_not_after=ca.ca_not_after)),
        ("leaf build and sign (LocalCA.sign)", sign),
        ("decision record at INFO, one at a time", lambda i: records(i, linger=0.0), 64),
        ("decision record at INFO, under load", lambda i: records(i, linger=0.05), 64),
        ("  primitive: ECDSA P-256 verify", lambda i: key.public_key().verify(signature, b"x" * 300,
                                                                              ec.ECDSA(hashes.SHA256()))),
        ("  primitive: ECDSA P-256 sign", lambda i: key.sign(b"x" * 300, ec.ECDSA(hashes.SHA256()))),
    ]  # fmt: skip
    rows.append(("whole handler, no gRPC (CreateCertificate)", whole_handler(base, tokens, csrs, loop), 20))
    for name, work, *per in rows:
        if options.only not in name:
            continue
        count = per[0] if per else 1
        print(f"{name:<40} {per_call_us(max(1, calls // count), work, count):7.0f} µs")


if __name__ == "__main__":
    main()
