"""A loopback TCP proxy in front of kube-apiserver that can cut every connection through it at once, so a test
breaks meshsigner's watch (and its in-flight API calls) without touching the API server cert-manager uses. TLS
passes through untouched: the API server's certificate names 127.0.0.1, which is where the proxy listens. While
``down`` (:meth:`set_down`), every new connection is reset as it arrives: the API server looks unreachable."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import yaml


class CuttingProxy:
    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.cuts = 0
        self.accepted = 0
        self.down = False
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                self._open.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(source)

    def cut(self) -> int:
        """Break every open connection at once (linger 0: the close resets it); returns how many were open."""
        with self._lock:
            victims = list(self._open)
            self._open.clear()
            self.cuts += 1
        for sock in victims:
            _reset(sock)
        return len(victims)

    def set_down(self, down: bool) -> None:
        """Down: the open connections are cut and new ones reset (an unreachable API server); up: proxied again."""
        self.down = down
        if down:
            self.cut()

    def kubeconfig(self, original: str, path: Path) -> Path:
        config = yaml.safe_load(Path(original).read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        path.write_text(yaml.safe_dump(config))
        return path

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self.cut()


def _reset(sock: socket.socket) -> None:
    """Close with linger 0, so the peer sees a reset rather than an orderly end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes the pump threads blocked in recv
    with contextlib.suppress(OSError):
        sock.close()
