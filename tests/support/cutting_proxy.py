"""A TCP proxy on loopback in front of a server, which cuts a chat stream partway, as a lost network would.

The browser talks to the proxy; the proxy forwards bytes both ways. Armed with `cut_next_stream`, it
forwards only the first bytes of the next chat completion's response, then closes both of that
connection's sockets (the browser sees the network fail mid-answer; the server sees its client gone),
and for a moment closes every new connection at once, as a phone without signal would see.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

CHAT_REQUEST = b"POST /v1/chat/completions "


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to the server's port; `cut_next_stream(after_bytes, down_seconds)` arms one cut."""

    def __init__(self, target_port: int):
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._cut_after: int | None = None
        self._down_seconds = 0.0
        self._down_until = 0.0
        self.cuts = 0
        threading.Thread(target=self._accept, name="cutting-proxy", daemon=True).start()

    def cut_next_stream(self, after_bytes: int, down_seconds: float) -> None:
        """Cut the next chat completion's response after `after_bytes`, then refuse connections for a while."""
        with self._lock:
            self._cut_after, self._down_seconds = after_bytes, down_seconds

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            if time.monotonic() < self._down_until:
                client.close()  # no network
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target))
            except OSError:
                client.close()
                continue
            connection = _Connection(self, client, upstream)
            threading.Thread(target=connection.requests, daemon=True).start()
            threading.Thread(target=connection.responses, daemon=True).start()

    def _take_cut(self) -> int | None:
        """The armed cut's byte count, once."""
        with self._lock:
            after, self._cut_after = self._cut_after, None
            return after

    def _went_down(self) -> None:
        self.cuts += 1
        self._down_until = time.monotonic() + self._down_seconds


class _Connection:
    """One proxied connection: the browser's socket and the server's."""

    def __init__(self, proxy: CuttingProxy, client: socket.socket, upstream: socket.socket):
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self.cut_after: int | None = None  # set when a chat request goes by and a cut is armed
        self.sent = 0

    def requests(self) -> None:
        """Browser to server; notes a chat completion request going by."""
        try:
            while data := self.client.recv(65536):
                if data.startswith(CHAT_REQUEST) and self.cut_after is None:
                    self.cut_after = self.proxy._take_cut()
                    self.sent = 0
                self.upstream.sendall(data)
        except OSError:
            pass
        self.close()

    def responses(self) -> None:
        """Server to browser; cuts the connection once the armed number of bytes has gone through."""
        try:
            while data := self.upstream.recv(65536):
                if self.cut_after is not None and self.sent + len(data) >= self.cut_after:
                    self.client.sendall(data[: self.cut_after - self.sent])
                    self.proxy._went_down()
                    break
                self.sent += len(data)
                self.client.sendall(data)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):  # already closed by the other side
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
