"""The engine: loads a backend in the background and serves queued requests, decoding them together.

It knows nothing about HTTP or torch: requests come in, events (started, text, finished) go out.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import cast

from loupe.engine.generation import AnyBackend, AnyStreamingBackend, Generation
from loupe.engine.run import Run
from loupe.errors import GenerationFailed, LoupeError, ModelUnavailable, ServerBusy, ShuttingDown
from loupe.inference import ChatRequest, Timings

log = logging.getLogger(__name__)


Loaded = AnyBackend | AnyStreamingBackend  # what a loader gives: the batch engine's kind, or StreamingEngine's
# Told how each generation ended: `stop`, `length`, `cancelled` or `error`, and its timings if it finished.
Observer = Callable[[str, "Timings | None"], None]
# Told of each decode forward pass: how many sequences it fed and how long it took, in seconds.
StepObserver = Callable[[int, float], None]


class Engine:
    """Loads the backend once, in the background, and serves a bounded FIFO queue with one worker.

    The worker decodes up to `max_batch` generations together, one token each per step (they share
    each pass over the weights); waiting requests join between steps, in order.
    """

    def __init__(self, load: Callable[[], Loaded], queue_size: int, max_batch: int = 1, request_timeout: float = 0.0):
        self._load = load
        self._queue_size = queue_size
        self._max_batch = max_batch
        self._request_timeout = request_timeout
        self._queue: queue.Queue[Generation | None] = queue.Queue()  # None: close() wakes the worker
        self._waiting = 0
        self._lock = threading.Lock()
        self._backend: Loaded | None = None
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._active = 0
        self._runs: list[Run] = []  # the batch; only the engine's thread changes it
        self._starting: Generation | None = None  # off the queue, its prompt being read: not yet a run
        self._aborted: LoupeError | None = None  # set by abort_all: what a generation taken after it gets
        self._draining = False
        self._observers: list[Observer] = []
        self._step_observers: list[StepObserver] = []
        self.load_seconds: float | None = None

    def start(self) -> Engine:
        """Begin loading the model and serving the queue; returns at once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._load_and_serve, name="loupe-engine", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Stop for good: end the running and queued generations (503), then let the worker thread end."""
        with self._lock:
            self._draining = self._closed = True
        self.abort_all(ShuttingDown("The server stopped before this generation finished."))
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)  # a load in progress finishes first

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
    def backend(self) -> Loaded | None:
        """The loaded backend, or None while loading or after a failure."""
        return self._backend

    @property
    def problem(self) -> str | None:
        """Why a loaded backend cannot serve right now (an engine behind it down, say); None when it can."""
        return None

    @property
    def cached_tokens(self) -> int:
        """Tokens of earlier conversations the loaded model keeps for follow-ups (0 until loaded)."""
        return self._backend.cached_tokens if self._backend is not None else 0

    @property
    def running(self) -> int:
        """Generations under way."""
        return self._active

    @property
    def queue_depth(self) -> int:
        """Requests waiting for their turn."""
        return self._waiting

    @property
    def draining(self) -> bool:
        """Whether the engine is finishing its work before the process stops, and taking no more."""
        return self._draining

    def drain(self) -> None:
        """Refuse new requests from now on; running and queued ones still complete."""
        with self._lock:  # submit queues under it: once this returns, nothing more is queued
            self._draining = True

    def add_observer(self, observer: Observer) -> None:
        """Call `observer(outcome, timings)` after each generation (metrics use this)."""
        self._observers.append(observer)

    def add_step_observer(self, observer: StepObserver) -> None:
        """Call `observer(batch_size, seconds)` after each decode forward pass."""
        self._step_observers.append(observer)

    def abort_all(self, error: LoupeError) -> int:
        """End every generation, queued, starting or running, with `error` (and any taken later); how many."""
        with self._lock:
            self._aborted = error
            queued = [generation for generation in list(self._queue.queue) if generation is not None]
            starting = [self._starting] if self._starting is not None else []
            pending = queued + starting + [run.generation for run in self._runs]
        for generation in pending:
            generation.fail(error)
        return len(pending)

    def submit(self, request: ChatRequest) -> Generation:
        """Prepare the prompt on the caller's thread and queue it; 503 if not ready or stopping, 429 if full."""
        if self._draining:
            raise ShuttingDown("The server is shutting down; send the request to another instance or retry.")
        backend = self._backend
        if backend is None:
            if self._error is not None:
                raise ModelUnavailable(f"The model failed to load: {self._error}")
            raise ModelUnavailable("The model is still loading; try again shortly.")
        backend.validate(request.sampling)
        prompt = backend.prepare(request.messages, request.sampling.max_tokens)
        generation = Generation(request, prompt, self._request_timeout, on_cancel=self._release_slot)
        with self._lock:  # drain() and abort_all() take it too: a request is refused, or queued and reached
            if self._draining:
                raise ShuttingDown("The server is shutting down; send the request to another instance or retry.")
            # QUEUE_SIZE requests may wait once the batch is full; free batch places take more.
            if self._waiting >= self._queue_size + self._max_batch - self._active:
                raise ServerBusy("The server is busy with other requests; try again shortly.")
            self._waiting += 1
            generation.holds_slot = True
            self._queue.put(generation)
        return generation

    def _release_slot(self, generation: Generation) -> None:
        """Free a queue slot once per generation: when the worker takes it, or when it is cancelled first."""
        with self._lock:
            if generation.holds_slot:
                generation.holds_slot = False
                self._waiting -= 1

    def _load_and_serve(self) -> None:
        begin = time.perf_counter()
        try:
            backend = self._load()
        except Exception as exc:  # any load failure becomes /health's reason
            log.exception("model failed to load")
            self._error = str(exc) or type(exc).__name__
            return
        self.load_seconds = time.perf_counter() - begin
        self._backend = backend
        log.info("model %s ready in %.1f s", backend.name, self.load_seconds)
        self._serve(backend)

    def _serve(self, loaded: Loaded) -> None:
        """Decode the batch, admitting waiting requests between steps, until closed."""
        backend = cast(AnyBackend, loaded)  # this engine is given a batch backend (StreamingEngine, the other kind)
        while not self._closed or self._runs:  # closing: the cancelled runs leave the batch first
            self._admit(backend)
            self._step(backend)
            self._active = len(self._runs)

    def _admit(self, backend: AnyBackend) -> None:
        """Start one waiting request if the batch has room; wait for one when there is nothing to do.

        One per step: each new request gets its first token right after its own prefill, and the
        running ones go on decoding between prefills, instead of everyone waiting for a burst's.
        """
        while len(self._runs) < self._max_batch:
            try:
                generation = self._queue.get(block=not self._runs)
            except queue.Empty:
                return
            if generation is None:  # close() woke the worker
                return
            self._release_slot(generation)
            run = self._start(backend, generation)
            with self._lock:  # abort_all finds each generation queued, starting or running: never none of them
                self._starting = None
                if run is not None:
                    self._runs.append(run)
            if run is not None:
                return

    def _start(self, backend: AnyBackend, generation: Generation) -> Run | None:
        """Read a generation's prompt into a run for the batch; None if it was cancelled or its prefill failed."""
        with self._lock:
            self._starting, aborted = generation, self._aborted
        if aborted is not None:  # taken off the queue just as abort_all looked at the queue
            generation.fail(aborted)
        if generation.cancelled:
            self._notify("timeout" if generation.timed_out else "cancelled", None)
            return None
        self._active = len(self._runs) + 1
        run = Run(generation)
        try:
            run.sequence = backend.start(generation.prompt, generation.request.sampling)
        except Exception:
            log.exception("reading the prompt failed")
            generation.put(GenerationFailed("prefill failed"))
            self._notify("error", None)
            return None
        return run

    def _step(self, backend: AnyBackend) -> None:
        """One token for every run; finished and cancelled ones leave before the next pass."""
        runs = self._runs
        try:
            for run in list(runs):
                if run.generation.cancelled:
                    log.info("generation cancelled after %d tokens", run.count)
                    run.outcome = "timeout" if run.generation.timed_out else "cancelled"
                elif not run.on_token(backend.sample(run.sequence)):
                    continue
                runs.remove(run)
                backend.finish(run.sequence)
                self._notify(run.outcome, run.timings if run.outcome in ("stop", "length") else None)
            if runs:
                begin = time.perf_counter()
                backend.advance()
                self._notify_step(len(runs), time.perf_counter() - begin)
        except Exception:
            log.exception("generation failed")
            for run in runs:
                run.generation.put(GenerationFailed("generation failed"))
                self._notify("error", None)
                try:
                    backend.finish(run.sequence)
                except Exception:  # the engine thread must outlive any one batch
                    log.exception("could not release a failed sequence")
            runs.clear()

    def _notify_step(self, batch_size: int, seconds: float) -> None:
        """Tell the step observers about one forward pass."""
        _tell(self._step_observers, batch_size, seconds)

    def _notify(self, outcome: str, timings: Timings | None) -> None:
        """Tell the observers how a generation ended."""
        _tell(self._observers, outcome, timings)


def _tell(observers: list[Callable], *args) -> None:
    """Call each observer; their failures are logged and never stop the engine."""
    for observer in observers:
        try:
            observer(*args)
        except Exception:  # a metrics bug must not take generation down
            log.exception("observer %r failed", observer)
