"""The engine for a backend that batches on its own (BACKEND=openai): each generation streamed on its own thread.

An engine behind an HTTP API (vLLM, llama-server) decodes its requests together itself; stepping them
here one token at a time would only hold the fast behind the slow. So this engine keeps the batch
engine's queue, limits, deadlines, cancellation, drain and observers, and hands each generation to the
backend's own stream, up to MAX_BATCH at once.
"""

from __future__ import annotations

import logging
import threading
from contextlib import closing
from typing import cast

from loupe.engine.engine import Engine, Loaded
from loupe.engine.generation import AnyStreamingBackend, Generation
from loupe.engine.run import Run
from loupe.errors import GenerationFailed, LoupeError
from loupe.inference import Ending

log = logging.getLogger(__name__)

WAKE_SECONDS = 0.5  # how often a dispatcher waiting for room looks whether the engine closed


class StreamingEngine(Engine):
    """Serves a StreamingBackend: up to `max_batch` generations streaming at once, the rest queued."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._room = threading.Condition()  # told when a stream ends: the dispatcher may start another
        self._streams: list[threading.Thread] = []

    @property
    def problem(self) -> str | None:
        """Why the engine behind the backend cannot serve now (unreachable, no such model); None when it can."""
        backend = cast(AnyStreamingBackend | None, self._backend)
        return backend.problem() if backend is not None else None

    def _serve(self, loaded: Loaded) -> None:
        """Start queued generations, in order, whenever fewer than `max_batch` stream; until closed."""
        backend = cast(AnyStreamingBackend, loaded)  # app.py gives this engine a streaming backend
        while not self._closed:
            with self._room:
                while len(self._runs) >= self._max_batch and not self._closed:
                    self._room.wait(WAKE_SECONDS)
            generation = self._queue.get()
            if generation is None:  # close() woke the dispatcher
                break
            self._release_slot(generation)
            run = self._begin(generation)
            if run is not None:
                thread = threading.Thread(target=self._stream, args=(backend, run), name="loupe-stream", daemon=True)
                self._streams = [t for t in self._streams if t.is_alive()] + [thread]
                thread.start()
        for thread in self._streams:  # close() cancelled them: each ends within the backend's poll
            thread.join(WAKE_SECONDS * 10)
        backend.close()

    def _begin(self, generation: Generation) -> Run | None:
        """A run for the generation, counted as streaming; None if it was cancelled (or aborted) meanwhile."""
        with self._lock:  # abort_all finds each generation queued, starting or streaming: never none of them
            self._starting, aborted = generation, self._aborted
        if aborted is not None:  # taken off the queue just as abort_all looked at the queue
            generation.fail(aborted)
        run = None if generation.cancelled else Run(generation, counts_tokens=False)
        with self._lock:
            self._starting = None
            if run is not None:
                self._runs.append(run)
                self._active = len(self._runs)
        if run is None:
            self._notify("timeout" if generation.timed_out else "cancelled", None)
        return run

    def _stream(self, backend: AnyStreamingBackend, run: Run) -> None:
        """Feed the backend's stream into the run until it ends, the client goes, or it fails."""
        generation = run.generation
        try:
            cancelled = lambda: generation.cancelled  # noqa: E731 - read at each poll, not once
            with closing(backend.stream(generation.prompt, generation.request.sampling, cancelled)) as pieces:
                for piece in pieces:  # leaving the loop closes the stream, and so the request upstream
                    if isinstance(piece, Ending):
                        run.end(piece)
                        break
                    if run.on_token(piece):  # a stop string of Loupe's own matched
                        break
            if run.outcome in ("stop", "length"):
                pass
            elif generation.cancelled:
                run.outcome = "timeout" if generation.timed_out else "cancelled"
            else:  # the backend broke its promise of an Ending
                raise RuntimeError("the backend's stream ended without saying how")
        except LoupeError as error:  # the engine behind failed: 502/504 with its words
            log.warning("generation failed upstream: %s", error.message)
            generation.put(error)
            run.outcome = "error"
        except Exception:
            log.exception("generation failed")
            generation.put(GenerationFailed("generation failed"))
            run.outcome = "error"
        finally:
            with self._lock:
                self._runs.remove(run)
                self._active = len(self._runs)
            with self._room:
                self._room.notify()
        self._notify(run.outcome, run.timings if run.outcome in ("stop", "length") else None)
