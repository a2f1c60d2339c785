"""HTTP to an OpenAI-compatible engine with httpx2: its model list, and streamed chat completions that stop
when the caller gives up.

httpx2's asynchronous client runs on one event loop thread of its own. A blocking read cannot be broken
off from another thread (closing a socket under a thread that reads it is not safe), but a task can be
cancelled: so a client that hangs up, or a deadline, ends the request to the engine within POLL_SECONDS
even while the engine is still reading the prompt and has sent nothing, and the engine, seeing its
connection closed, stops generating.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections.abc import Callable, Generator
from urllib.parse import urlsplit, urlunsplit

import httpx2

from loupe.errors import InvalidRequest, LoupeError, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

CONNECT_SECONDS = 10.0  # a reachable engine accepts a connection at once; longer is a network problem
POLL_SECONDS = 0.1  # how late a hang-up or a deadline reaches the engine
MAX_ERROR_BYTES = 64 * 1024  # of an engine's error body: enough for its message, never a whole page
_END = object()


class UpstreamClient:
    """One engine's OpenAI API at `base_url`, with its key; safe to use from any number of threads."""

    def __init__(self, base_url: str, api_key: str, timeout: float):
        self.base_url = base_url.rstrip("/")
        self.address = without_credentials(self.base_url)  # what logs and /health may show
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loupe-upstream", daemon=True)
        self._thread.start()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

        async def make() -> httpx2.AsyncClient:  # on the loop that will use it
            # trust_env off: the engine is on the operator's network, never behind a proxy meant for the outside
            return httpx2.AsyncClient(
                base_url=self.base_url + "/",
                headers=headers,
                timeout=httpx2.Timeout(timeout, connect=CONNECT_SECONDS),
                limits=httpx2.Limits(max_connections=None, max_keepalive_connections=32),
                trust_env=False,
            )

        self._client = asyncio.run_coroutine_threadsafe(make(), self._loop).result()

    def close(self) -> None:
        """Close the connections and stop the loop thread."""
        asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(CONNECT_SECONDS)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONNECT_SECONDS)

    def models(self, timeout: float) -> list[str]:
        """The ids of the models the engine serves (GET /models); raises UpstreamError or UpstreamTimeout."""

        async def fetch() -> list[str]:
            response = await self._client.get("models", timeout=timeout)
            if response.status_code != 200:
                raise refusal(response.status_code, response.content[:MAX_ERROR_BYTES], self.address)
            try:
                return [str(model["id"]) for model in response.json()["data"]]
            except (ValueError, KeyError, TypeError):
                raise UpstreamError(
                    f"{self.address}/models did not list models as OpenAI's API does: is BACKEND_URL the "
                    "engine's OpenAI API base (ending in /v1)?"
                ) from None

        future = asyncio.run_coroutine_threadsafe(self._guarded(fetch()), self._loop)
        return future.result()

    def stream(self, body: dict, cancelled: Callable[[], bool]) -> Generator[object, None, None]:
        """POST /chat/completions and yield each chunk's JSON as it arrives; closing this stops the request."""
        chunks: queue.Queue[object] = queue.Queue()
        future = asyncio.run_coroutine_threadsafe(self._guarded(self._pump(body, chunks)), self._loop)
        try:
            while True:
                try:
                    chunk = chunks.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    if cancelled():
                        return
                    if future.done():  # it failed before its first chunk: its error is the answer
                        future.result()
                        return
                    continue
                if chunk is _END:
                    future.result()  # raises the request's error, if it ended in one
                    return
                if cancelled():  # a steady stream never leaves the queue empty: look between chunks too
                    return
                yield chunk
        finally:
            future.cancel()  # cancels the task: the response closes, and with it the connection to the engine

    async def _pump(self, body: dict, chunks: queue.Queue[object]) -> None:
        """Put each `data:` chunk of the engine's stream on `chunks`, then _END (always, on failure too)."""
        try:
            async with self._client.stream("POST", "chat/completions", json=body) as response:
                if response.status_code != 200:
                    raise refusal(response.status_code, await _head(response), self.address)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # SSE comments, event names and the blank lines between events
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunks.put(json.loads(data))
                    except ValueError:
                        raise UpstreamError(
                            f"The engine behind this server sent a stream line that is not JSON: is BACKEND_URL "
                            f"({self.address}) an OpenAI-compatible API?"
                        ) from None
        finally:
            chunks.put(_END)

    async def _guarded(self, work):
        """Await `work`, turning httpx2's failures into 502 and 504 errors that say what to do."""
        try:
            return await work
        except httpx2.TimeoutException as error:
            log.warning("the engine at %s timed out: %r", self.address, error)
            if isinstance(error, httpx2.ConnectTimeout):
                raise UpstreamTimeout(
                    f"The engine behind this server did not accept a connection within {CONNECT_SECONDS:g} s; "
                    "it may be overloaded or unreachable: retry later, or tell the operator."
                ) from None
            raise UpstreamTimeout(
                f"The engine behind this server sent nothing for {self.timeout:g} s (BACKEND_TIMEOUT); it may be "
                "overloaded: retry later, ask for fewer tokens, or tell the operator."
            ) from None
        except httpx2.HTTPError as error:
            log.warning("the engine at %s could not be reached or broke off: %r", self.address, error)
            raise UpstreamError(
                f"The engine behind this server could not be reached or broke off its answer "
                f"({_reason(error)}); it may be down or restarting: retry shortly, and tell the operator if "
                "it persists."
            ) from None


async def _head(response: httpx2.Response) -> bytes:
    """The start of an error response's body (an engine's message), not all of it."""
    head = b""
    async for piece in response.aiter_bytes():
        head += piece
        if len(head) >= MAX_ERROR_BYTES:
            break
    return head[:MAX_ERROR_BYTES]


def refusal(status: int, body: bytes, address: str) -> LoupeError:
    """The error for an engine's non-200 answer: its words, and what to do about it."""
    words = _message(body)
    if status in (400, 413, 422):  # the request itself: the client can change it
        return InvalidRequest(f"The engine behind this server refused the request: {words}")
    if status in (401, 403):
        return UpstreamError(
            f"The engine behind this server refused Loupe's credentials ({status}); the operator should check "
            "BACKEND_API_KEY."
        )
    if status == 404:
        return UpstreamError(
            f"The engine behind this server has no such model or route ({words}); the operator should check "
            f"BACKEND_URL ({address}, the API base ending in /v1) and BACKEND_MODEL."
        )
    if status == 429:
        return UpstreamError(f"The engine behind this server is busy (429: {words}); retry shortly.")
    return UpstreamError(f"The engine behind this server failed ({status}: {words}); retry, or tell the operator.")


def _message(body: bytes) -> str:
    """An engine's error message: OpenAI's envelope's, a plain JSON `message`, or the text itself, shortened."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed)
        found = error.get("message") if isinstance(error, dict) else error
        text = str(found if found is not None else parsed.get("detail", text))
    return (text[:300] + "…") if len(text) > 300 else (text or "no message")


def _reason(error: httpx2.HTTPError) -> str:
    """A short cause: `connection refused`, `the connection closed mid-answer`, or the exception's own words."""
    if isinstance(error, httpx2.ConnectError):
        return "connection refused or name unknown"
    if isinstance(error, httpx2.RemoteProtocolError):
        return "the connection closed in the middle of the answer"
    return str(error) or type(error).__name__


def without_credentials(url: str) -> str:
    """The URL without a user or password in it, fit for a log or /health."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
