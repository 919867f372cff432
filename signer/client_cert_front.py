"""The TLS listener used with ``--enable-client-cert-authenticator``: it *asks* for a client certificate without
requiring one, which gRPC Python cannot do.

Why it exists: gRPC Python's server credentials (``ssl_server_credentials``, ``dynamic_ssl_server_credentials``,
checked on grpcio 1.85) map ``require_client_auth=False`` to the C core's "do not request a client certificate"
mode, so a workload's certificate never reaches the server, and ``True`` to "request and require", which would
lock out every token-only client (every sidecar). The C core's "request but do not require" mode is not exposed.

So with the flag on, Python's ``ssl`` module terminates TLS (``CERT_OPTIONAL``: the certificate is requested,
verified against the pinned roots when given, and optional; ALPN ``h2``; TLS 1.2 minimum) and each connection is
piped, bytes unchanged, to the gRPC server listening on a unix socket in a private directory (mode 0700: no other
user can reach the plaintext side). Each piped connection comes from its own bound socket path, which gRPC reports
as the call's peer (``context.peer()``), so the servicer can look up which certificate chain arrived on the
connection its call came in on. HTTP/2 stays end to end between the client and gRPC (GOAWAY on shutdown included).
The serving certificate and the roots are taken afresh for every new connection, so renewal and root rotation need
no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from loguru import logger

from bridge.signing import ServingMaterial
from signer.logs import RateLimiter

HANDSHAKE_TIMEOUT_SECONDS = 10.0  # the same bound the gRPC listener puts on handshakes
PIPE_CHUNK = 64 * 1024
MAX_PRESENTED_CERTIFICATES = 8  # a longer chain is not kept (the authenticator refuses more than it allows anyway)
MAX_CONNECTIONS = 4096  # the gRPC listener's grpc.max_allowed_incoming_connections


@dataclass(frozen=True, slots=True)
class _Piped:
    """What the front knows of one piped connection, by the unix path gRPC reports as its peer."""

    chain: tuple[x509.Certificate, ...]  # the client certificates presented (empty: none)
    remote: str  # the TLS client's address, as gRPC would name it


class ClientCertFront:
    """Accepts TLS connections, remembers each one's client chain, pipes it to the gRPC server's unix socket."""

    def __init__(
        self,
        *,
        material: Callable[[], ServingMaterial | None],
        roots: Callable[[], Sequence[x509.Certificate]],
        minimum_tls13: bool = False,
        tls12_ciphers: Sequence[str] = (),
    ) -> None:
        """``minimum_tls13`` and ``tls12_ciphers`` (OpenSSL names) are --serving-tls-min-version and
        --serving-tls-cipher-suites, which this listener, unlike gRPC Python's, can honour."""
        self._material = material
        self._roots = roots
        self._minimum = ssl.TLSVersion.TLSv1_3 if minimum_tls13 else ssl.TLSVersion.TLSv1_2
        self._ciphers = ":".join(tls12_ciphers)
        self._directory = Path(tempfile.mkdtemp(prefix="meshsigner-front-"))  # mode 0700
        self._context: ssl.SSLContext | None = None
        self._context_key: tuple[int, bytes] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._piped: dict[str, _Piped] = {}  # by unix path
        self._connections: set[asyncio.Task[None]] = set()
        self._numbers = itertools.count()
        self._log_limit = RateLimiter()

    @property
    def grpc_address(self) -> str:
        """Where the gRPC server must listen (plaintext, reachable only by this user)."""
        return f"unix:{self._grpc_socket}"

    @property
    def _grpc_socket(self) -> Path:
        return self._directory / "grpc.sock"

    def peer_chain(self, peer: str) -> tuple[x509.Certificate, ...]:
        """The certificates the client on ``peer`` (a gRPC ``context.peer()``) presented; empty when none."""
        piped = self._piped.get(peer.removeprefix("unix:"))
        return piped.chain if piped is not None else ()

    def remote_peer(self, peer: str) -> str:
        """The TLS client's own address for a gRPC ``context.peer()`` of a piped connection (per-peer limits must
        see the caller, not the pipe); ``peer`` itself when it did not come through this front."""
        piped = self._piped.get(peer.removeprefix("unix:"))
        return piped.remote if piped is not None else peer

    async def start(self, address: str) -> int:
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Unread(self._spawn),
            host.strip("[]") or None,
            int(port),
            reuse_port=True,  # --workers share it
        )
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    def _spawn(self, transport: asyncio.Transport) -> None:
        if len(self._connections) >= MAX_CONNECTIONS:
            transport.abort()
            return
        task = asyncio.create_task(self._accept(transport))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def stop_accepting(self) -> None:
        """Close the listening socket; connections already accepted keep running (they drain through gRPC)."""
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        await self.stop_accepting()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        shutil.rmtree(self._directory, ignore_errors=True)

    def _ssl_context(self) -> ssl.SSLContext:
        """The context for the next handshake: rebuilt when the serving certificate or the roots changed."""
        material = self._material()
        if material is None:
            raise ConnectionError("no serving certificate yet")
        roots = tuple(self._roots())
        roots_pem = b"".join(r.public_bytes(serialization.Encoding.PEM) for r in roots)
        key = (id(material), roots_pem)
        if self._context is None or key != self._context_key:
            self._context, self._context_key = self._build_context(material, roots_pem), key
        return self._context

    def _build_context(self, material: ServingMaterial, roots_pem: bytes) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = self._minimum
        if self._ciphers:
            context.set_ciphers(self._ciphers)
        context.set_alpn_protocols(["h2"])
        # no TLS 1.3 tickets and no 1.2 tickets; a 1.2 session-id resumption would carry the chain verified then,
        # which the authenticator verifies again at each call anyway (at the clock's time, against today's roots)
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
        if roots_pem:
            context.load_verify_locations(cadata=roots_pem.decode("ascii"))
            context.verify_mode = ssl.CERT_OPTIONAL  # request a client certificate; verify it when given
        # ssl loads keys only from files: write them into the private directory, load, delete at once
        key_file = self._directory / f"serving-{os.urandom(6).hex()}.key"
        chain_file = key_file.with_suffix(".crt")
        try:
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(_bytes(material.key_pem))
            chain_file.write_bytes(_bytes(material.chain_pem))
            context.load_cert_chain(chain_file, key_file)
        finally:
            key_file.unlink(missing_ok=True)
            chain_file.unlink(missing_ok=True)
        return context

    async def _accept(self, transport: asyncio.Transport) -> None:
        writer = None
        try:
            reader, writer = await self._handshake(transport)
            await self._serve_connection(reader, writer)
        except ssl.SSLError as exc:
            # a refused client certificate (expired, foreign root) ends here, as in istio-csr's handshake
            reason = getattr(exc, "reason", None) or type(exc).__name__
            allowed, suppressed = self._log_limit.allow(reason)
            if allowed:
                logger.bind(event="tls_handshake_failed", reason=reason, suppressed=suppressed).info(
                    "TLS handshake refused: {}", exc
                )
        except (ConnectionError, TimeoutError, OSError) as exc:
            logger.bind(event="client_cert_front_connection").debug("connection ended: {}", exc)
        finally:
            if writer is not None:
                writer.close()
            else:
                transport.close()

    async def _handshake(self, transport: asyncio.Transport) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """TLS on the still-unread connection, with the context of this moment (certificate, roots)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2 * PIPE_CHUNK)
        protocol = asyncio.StreamReaderProtocol(reader)
        tls = await loop.start_tls(
            transport, protocol, self._ssl_context(), server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_SECONDS
        )
        if tls is None:
            raise ConnectionError("closed during the TLS handshake")
        protocol.connection_made(tls)  # start_tls leaves this to the caller
        return reader, asyncio.StreamWriter(tls, protocol, reader, loop)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            return  # gRPC needs HTTP/2; anything else would only fail later
        chain = _presented_chain(ssl_object)
        path = str(self._directory / f"c-{next(self._numbers)}")
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.bind(path)  # gRPC reports this path as the call's peer
            upstream.setblocking(False)
            await asyncio.get_running_loop().sock_connect(upstream, str(self._grpc_socket))
            self._piped[path] = _Piped(chain, _grpc_peer_name(writer.get_extra_info("peername")))
            up_reader, up_writer = await asyncio.open_unix_connection(sock=upstream)
        except BaseException:
            self._piped.pop(path, None)
            upstream.close()
            with contextlib.suppress(OSError):  # not there when bind() failed: keep the first error
                os.unlink(path)
            raise
        try:
            await _pipe_both_ways(reader, writer, up_reader, up_writer)
        finally:
            self._piped.pop(path, None)  # forget the identity before the path can be reused
            up_writer.close()
            with contextlib.suppress(OSError):
                os.unlink(path)


class _Unread(asyncio.Protocol):
    """Holds a new connection unread until its TLS handshake starts: bytes read before it (the ClientHello, under
    load) would be lost to TLS and the handshake would hang."""

    def __init__(self, spawn: Callable[[asyncio.Transport], None]) -> None:
        self._spawn = spawn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self._spawn(transport)


def _grpc_peer_name(peername: object) -> str:
    """``ipv4:1.2.3.4:5`` / ``ipv6:[::1]:5``, the form gRPC's ``context.peer()`` uses for TCP callers."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = str(peername[0]), peername[1]
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
    return "unknown"


def _bytes(text: str | bytes) -> bytes:
    return text.encode("ascii") if isinstance(text, str) else text


def _presented_chain(ssl_object: ssl.SSLObject) -> tuple[x509.Certificate, ...]:
    """The certificates the client sent, leaf first (the leaf alone when the chain cannot be read)."""
    leaf = ssl_object.getpeercert(binary_form=True)
    if not leaf:
        return ()
    # Python 3.13 makes the peer's chain public; 3.11/3.12 have the same method on the private _sslobj.
    getter = getattr(ssl_object, "get_unverified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None
    )
    presented: list[bytes] = []
    if getter is not None:
        for item in getter() or ():
            presented.append(item if isinstance(item, bytes) else item.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]  # _ssl's encoding constant is not in typeshed
    if not presented or presented[0] != leaf:
        presented = [leaf]
    return tuple(x509.load_der_x509_certificate(der) for der in presented[:MAX_PRESENTED_CERTIFICATES])


async def _pipe_both_ways(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Copy bytes in both directions until either side closes."""
    tasks = [
        asyncio.create_task(_copy(reader, up_writer)),
        asyncio.create_task(_copy(up_reader, writer)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _copy(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    while data := await source.read(PIPE_CHUNK):
        target.write(data)
        await target.drain()
