"""A scripted OpenAI-compatible engine: a real HTTP server on a loopback port, answering as a test tells it.

It streams chat completions the way vLLM and llama-server do (`data:` chunks, a usage chunk, `[DONE]`),
and can fail in each way an engine fails: an error status, silence, a broken-off stream, garbage. It
keeps every request it was sent, and notices when the client (Loupe) closes a request early.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Stream:
    """Answer with these pieces, `delay` seconds apart, then finish_reason and usage."""

    pieces: tuple[str, ...] = ("Hello", ",", " world")
    delay: float = 0.0
    finish: str | None = "stop"
    usage: dict | None = field(default_factory=lambda: {"prompt_tokens": 11, "completion_tokens": 3})
    done: bool = True  # end with `data: [DONE]`
    error_after: str | None = None  # after the pieces, an error chunk with this message instead of a finish


@dataclass
class Status:
    """Answer with this status and body (an engine refusing or failing)."""

    code: int
    body: str = '{"error": {"message": "scripted failure", "type": "server_error"}}'


@dataclass
class Silent:
    """Send nothing for `seconds` (an engine stuck or overloaded); then close."""

    seconds: float


@dataclass
class Garbage:
    """A 200 whose stream holds a line that is not JSON."""


Reply = Stream | Status | Silent | Garbage


class FakeUpstream:
    """The engine: `url` is its API base (…/v1); set `reply` and `models`; read `requests` and `hung_up`."""

    def __init__(self, models: tuple[str, ...] = ("fake-model",)):
        self.models = models
        self.models_reply: Status | None = None  # a /models failure instead of the list
        self.reply: Reply = Stream()
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.hung_up = threading.Event()  # a client closed a chat request before its answer ended
        self.finished = threading.Event()  # an answer was sent whole
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-upstream", daemon=True)

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: pytest shows failures, not every request
                pass

            def do_GET(self) -> None:
                if self.path != "/v1/models":
                    return self._send(Status(404, '{"error": {"message": "no such route"}}'))
                if fake.models_reply is not None:
                    return self._send(fake.models_reply)
                body = {"object": "list", "data": [{"id": m, "object": "model"} for m in fake.models]}
                self._send(Status(200, json.dumps(body)))

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self._send(Status(404, '{"error": {"message": "no such route"}}'))
                fake.requests.append(body)
                fake.headers.append(dict(self.headers))
                reply = fake.reply
                if isinstance(reply, Status):
                    return self._send(reply)
                self._start_stream()
                try:
                    if isinstance(reply, Silent):
                        self._wait(reply.seconds)
                    elif isinstance(reply, Garbage):
                        self._write("data: this is not json\n\n")
                    else:
                        self._stream(reply, body.get("model", ""))
                except (BrokenPipeError, ConnectionResetError):
                    fake.hung_up.set()
                self.close_connection = True

            def _stream(self, reply: Stream, model: str) -> None:
                """The pieces as chunks, then the finish, usage and [DONE] chunks as the reply says."""
                for piece in reply.pieces:
                    if reply.delay:
                        self._wait(reply.delay)
                    self._write(_chunk(model, {"content": piece}, None))
                if reply.error_after is not None:
                    self._write("data: " + json.dumps({"error": {"message": reply.error_after}}) + "\n\n")
                    return
                if reply.finish is not None:
                    self._write(_chunk(model, {}, reply.finish))
                if reply.usage is not None:
                    self._write("data: " + json.dumps({"choices": [], "usage": reply.usage}) + "\n\n")
                if reply.done:
                    self._write("data: [DONE]\n\n")
                fake.finished.set()

            def _start_stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")  # the body ends when the connection does
                self.end_headers()

            def _write(self, text: str) -> None:
                self.wfile.write(text.encode())
                self.wfile.flush()

            def _wait(self, seconds: float) -> None:
                """Sleep, noticing meanwhile a client that closed its connection (as an engine's server does)."""
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    readable, _, _ = select.select([self.connection], [], [], 0.02)
                    if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                        raise ConnectionResetError("the client closed its connection")

            def _send(self, reply: Status) -> None:
                data = reply.body.encode()
                self.send_response(reply.code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _chunk(model: str, delta: dict, finish: str | None) -> str:
    """One `chat.completion.chunk` SSE frame."""
    chunk = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return "data: " + json.dumps(chunk) + "\n\n"
