"""The engine: loads a backend in the background and runs queued requests on it, one at a time.

It knows nothing about HTTP or torch: requests come in, events (started, text, finished) go out.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from errors import GenerationFailed, LoupeError, ModelUnavailable, ServerBusy
from inference import ChatRequest, Event, Finished, Message, SamplingParams, Started, TextDelta, Timings
from stops import StopMatcher

log = logging.getLogger(__name__)


class Prompt(Protocol):
    """A prepared prompt: token ids and pixels, whatever the backend needs."""

    prompt_tokens: int
    image_tokens: int


@dataclass(frozen=True)
class Token:
    """One generated token: its id, the text it completes (may be empty) and whether it ends the answer."""

    id: int
    text: str
    eos: bool = False
    cached_prompt_tokens: int = 0  # on the first token: prompt tokens reused from the prefix cache


class Backend(Protocol):
    """What the engine needs from a model: prepare prompts, then decode a batch of sequences."""

    name: str
    device: str
    dtype: str

    def prepare(self, messages: Sequence[Message], max_tokens: int) -> Prompt:
        """Tokenise the conversation and process its images (raises InvalidRequest if too long)."""

    def start(self, prompt: Prompt, sampling: SamplingParams) -> object:
        """Read the prompt and add a sequence for it to the decode batch."""

    def sample(self, sequence: object) -> Token:
        """The sequence's next token."""

    def advance(self) -> None:
        """Feed every sequence in the batch its last sampled token (one forward pass)."""

    def finish(self, sequence: object) -> None:
        """Remove a sequence from the batch."""


class Generation:
    """One submitted request: iterate it for events; `cancel()` when the client has gone."""

    def __init__(self, request: ChatRequest, prompt: Prompt):
        self.request = request
        self.prompt = prompt
        self.submitted = time.perf_counter()
        self._events: queue.Queue[Event | LoupeError] = queue.Queue()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Ask the engine to stop (or never start) this generation."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """Whether the client gave up on this generation."""
        return self._cancelled.is_set()

    def put(self, event: Event | LoupeError) -> None:
        """Hand an event (or an error) to the consumer; the engine calls this."""
        self._events.put(event)

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self._events.get()
            if isinstance(event, LoupeError):
                raise event
            yield event
            if isinstance(event, Finished):
                return


class Engine:
    """Loads the backend once, in the background, and serves a bounded FIFO queue with one worker.

    The worker decodes up to `max_batch` generations together, one token each per step (they share
    each pass over the weights); waiting requests join between steps, in order.
    """

    def __init__(self, load: Callable[[], Backend], queue_size: int, max_batch: int = 1):
        self._load = load
        self._queue_size = queue_size
        self._max_batch = max_batch
        self._queue: queue.Queue[Generation] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._backend: Backend | None = None
        self._error: str | None = None
        self._started = False
        self._active = 0
        self.load_seconds: float | None = None

    def start(self) -> Engine:
        """Begin loading the model and serving the queue; returns at once."""
        if not self._started:
            self._started = True
            threading.Thread(target=self._load_and_serve, name="loupe-engine", daemon=True).start()
        return self

    @property
    def status(self) -> str:
        """`loading`, `ok` or `error`."""
        if self._backend is not None:
            return "ok"
        return "error" if self._error is not None else "loading"

    @property
    def error(self) -> str | None:
        """Why loading failed, in words an operator can act on."""
        return self._error

    @property
    def backend(self) -> Backend | None:
        """The loaded backend, or None while loading or after a failure."""
        return self._backend

    @property
    def running(self) -> int:
        """Generations under way."""
        return self._active

    @property
    def queue_depth(self) -> int:
        """Requests waiting for their turn."""
        return self._waiting

    def submit(self, request: ChatRequest) -> Generation:
        """Prepare the prompt on the caller's thread and queue it; 503 if not ready, 429 if full."""
        backend = self._backend
        if backend is None:
            if self._error is not None:
                raise ModelUnavailable(f"The model failed to load: {self._error}")
            raise ModelUnavailable("The model is still loading; try again shortly.")
        generation = Generation(request, backend.prepare(request.messages, request.sampling.max_tokens))
        with self._lock:
            # QUEUE_SIZE requests may wait once the batch is full; free batch places take more.
            if self._waiting >= self._queue_size + self._max_batch - self._active:
                raise ServerBusy("The server is busy with other requests; try again shortly.")
            self._waiting += 1
        self._queue.put(generation)
        return generation

    def _load_and_serve(self) -> None:
        begin = time.perf_counter()
        try:
            backend = self._load()
        except Exception as exc:  # noqa: BLE001 - any load failure becomes /health's reason
            log.exception("model failed to load")
            self._error = str(exc) or type(exc).__name__
            return
        self.load_seconds = time.perf_counter() - begin
        self._backend = backend
        log.info("model %s ready in %.1f s", backend.name, self.load_seconds)
        runs: list[_Run] = []
        while True:
            self._admit(backend, runs)
            self._step(backend, runs)
            self._active = len(runs)

    def _admit(self, backend: Backend, runs: list[_Run]) -> None:
        """Start waiting requests while the batch has room; wait for one when there is nothing to do."""
        while len(runs) < self._max_batch:
            try:
                generation = self._queue.get(block=not runs)
            except queue.Empty:
                return
            with self._lock:
                self._waiting -= 1
                self._active = len(runs) + 1
            if generation.cancelled:
                continue
            run = _Run(generation)
            try:
                run.sequence = backend.start(generation.prompt, generation.request.sampling)
            except Exception:
                log.exception("reading the prompt failed")
                generation.put(GenerationFailed("prefill failed"))
                continue
            runs.append(run)

    def _step(self, backend: Backend, runs: list[_Run]) -> None:
        """One token for every run; finished and cancelled ones leave before the next pass."""
        try:
            for run in list(runs):
                if run.generation.cancelled:
                    log.info("generation cancelled after %d tokens", run.count)
                    done = True
                else:
                    done = run.on_token(backend.sample(run.sequence))
                if done:
                    runs.remove(run)
                    backend.finish(run.sequence)
            if runs:
                backend.advance()
        except Exception:
            log.exception("generation failed")
            for run in runs:
                run.generation.put(GenerationFailed("generation failed"))
                try:
                    backend.finish(run.sequence)
                except Exception:  # the engine thread must outlive any one batch
                    log.exception("could not release a failed sequence")
            runs.clear()


class _Run:
    """One generation in the batch: its timings, stop strings and token count, turned into events."""

    def __init__(self, generation: Generation):
        self.generation = generation
        self.sampling = generation.request.sampling
        prompt = generation.prompt
        self.timings = Timings(image_tokens=prompt.image_tokens, prompt_tokens=prompt.prompt_tokens)
        self.began = time.perf_counter()
        self.timings.queue_ms = (self.began - generation.submitted) * 1000
        self.matcher = StopMatcher(self.sampling.stop)
        self.count = 0
        self.first_at: float | None = None
        self.sequence: object = None
        generation.put(Started())

    def on_token(self, token: Token) -> bool:
        """Send what the token adds to the answer; True when the generation is over."""
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
            self.timings.cached_tokens = token.cached_prompt_tokens
            self.timings.prompt_ms = (now - self.began) * 1000
            self.timings.ttft_ms = (now - self.generation.submitted) * 1000
        self.timings.decode_ms = (now - self.first_at) * 1000
        self.count += 1
        if token.eos:
            return self._finish("stop")
        text, stopped = self.matcher.feed(token.text)
        if text:
            self.generation.put(TextDelta(text))
        if stopped:  # the stop string itself is never sent
            return self._finish("stop", flush=False)
        if self.count >= self.sampling.max_tokens:
            return self._finish("length")
        return False

    def _finish(self, reason: str, flush: bool = True) -> bool:
        """Send held-back text (it was no stop string after all) and the Finished event."""
        if flush and (rest := self.matcher.flush()):
            self.generation.put(TextDelta(rest))
        self.timings.completion_tokens = self.count
        self.generation.put(Finished(reason, self.timings.prompt_tokens, self.count, self.timings))
        return True
