"""Readiness and metrics over plain HTTP (the ports istio-csr uses), on asyncio without a web framework."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

MAX_REQUEST_LINE = 4096

Readiness = Callable[[], list[str]]  # the reasons for not being ready; empty when ready


class ProbeServer:
    """Serves ``readiness_path`` (200 "ok" or 503 with reasons) and/or ``/metrics``."""

    def __init__(
        self,
        *,
        readiness: Readiness | None = None,
        readiness_path: str = "/readyz",
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._readiness = readiness
        self._path = readiness_path
        self._registry = registry
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _route(self, path: str) -> tuple[int, str, bytes]:
        if self._readiness is not None and path in (self._path, "/healthz", "/livez"):
            if path != self._path:
                return 200, "text/plain", b"ok\n"
            reasons = self._readiness()
            if not reasons:
                return 200, "text/plain", b"ok\n"
            return 503, "text/plain", ("not ready: " + "; ".join(reasons) + "\n").encode()
        if self._registry is not None and path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while True:  # skip headers
                header = await asyncio.wait_for(reader.readline(), 5)
                if header in (b"\r\n", b"\n", b""):
                    break
            parts = line[:MAX_REQUEST_LINE].decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else "/"
            status, content_type, body = self._route(path)
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
