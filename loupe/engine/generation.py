"""What the engine hands out and takes in: prompts, tokens, the backend's interface, a generation.

Knows nothing about HTTP or torch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from loupe.errors import LoupeError, RequestTimeout
from loupe.inference import ChatRequest, Ending, Event, Finished, Message, SamplingParams, Token


class Prompt(Protocol):
    """A prepared prompt: token ids and pixels, whatever the backend needs."""

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the whole prompt, image tokens included."""

    @property
    def image_tokens(self) -> int:
        """Tokens the prompt's images became."""


PromptT = TypeVar("PromptT", bound=Prompt)
SequenceT = TypeVar("SequenceT")  # the backend's own state of one generation: opaque to the engine


class Backend(Protocol[PromptT, SequenceT]):
    """What the engine needs from a model: prepare prompts, then decode a batch of sequences."""

    name: str
    device: str
    dtype: str
    kernels: str  # what computes it, for /health: e.g. "native avx2", "packed", "torch"

    @property
    def cached_tokens(self) -> int:
        """Tokens of earlier conversations kept for follow-up questions."""

    def prepare(self, messages: Sequence[Message], max_tokens: int) -> PromptT:
        """Tokenise the conversation and process its images (raises InvalidRequest if too long)."""

    def validate(self, sampling: SamplingParams) -> None:
        """Refuse (InvalidRequest) what the backend cannot follow, e.g. a JSON schema its grammar library lacks."""

    def start(self, prompt: PromptT, sampling: SamplingParams) -> SequenceT:
        """Read the prompt and add a sequence for it to the decode batch."""

    def sample(self, sequence: SequenceT) -> Token:
        """The sequence's next token."""

    def advance(self) -> None:
        """Feed every sequence in the batch its last sampled token (one forward pass)."""

    def finish(self, sequence: SequenceT) -> None:
        """Remove a sequence from the batch."""


AnyBackend = Backend[Any, Any]  # what the engine holds: it never looks inside prompts or sequences


class StreamingBackend(Protocol[PromptT]):
    """A model served elsewhere that batches on its own: prepare prompts, then stream each generation."""

    name: str
    device: str
    dtype: str
    kernels: str

    @property
    def cached_tokens(self) -> int:
        """Tokens of earlier conversations kept for follow-up questions (0: not known here)."""

    def prepare(self, messages: Sequence[Message], max_tokens: int) -> PromptT:
        """The conversation as the engine's request (images encoded); raises InvalidRequest if it cannot be."""

    def validate(self, sampling: SamplingParams) -> None:
        """Refuse (InvalidRequest) what the backend cannot follow."""

    def stream(
        self, prompt: PromptT, sampling: SamplingParams, cancelled: Callable[[], bool]
    ) -> Generator[Token | Ending, None, None]:
        """The answer's pieces, then how it ended; stops soon after `cancelled()` turns true (raises LoupeError)."""

    def problem(self) -> str | None:
        """Why generations cannot be served right now, in words an operator can act on; None when they can."""

    def close(self) -> None:
        """Let go of what it holds (connections, threads); the engine calls it once it has stopped."""


AnyStreamingBackend = StreamingBackend[Any]


class Generation:
    """One submitted request: iterate it for events; `cancel()` when the client has gone."""

    def __init__(
        self,
        request: ChatRequest,
        prompt: Prompt,
        timeout: float = 0.0,
        on_cancel: Callable[[Generation], None] | None = None,
    ):
        self.request = request
        self.prompt = prompt
        self.submitted = time.perf_counter()
        self.timeout = timeout
        self.timed_out = False
        self.holds_slot = False  # whether it counts against the queue (the engine sets and clears this)
        self._deadline = self.submitted + timeout if timeout > 0 else None
        self._on_cancel = on_cancel
        self._events: queue.Queue[Event | LoupeError] = queue.Queue()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Ask the engine to stop (or never start) this generation; a queued one frees its slot at once."""
        self._cancelled.set()
        if self._on_cancel is not None:
            self._on_cancel(self)

    @property
    def cancelled(self) -> bool:
        """Whether the client gave up on this generation."""
        return self._cancelled.is_set()

    def fail(self, error: LoupeError) -> None:
        """End this generation with an error for its consumer, and stop the engine working on it."""
        self.cancel()
        self._events.put(error)

    def put(self, event: Event | LoupeError) -> None:
        """Hand an event (or an error) to the consumer; the engine calls this."""
        self._events.put(event)

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                event = self._events.get(timeout=self._remaining())
            except queue.Empty:  # past the deadline, waiting or running: end it and free its slot
                self.timed_out = True
                self.fail(
                    RequestTimeout(
                        f"The request did not finish within REQUEST_TIMEOUT ({self.timeout:g} s) "
                        "of waiting and generating; ask for fewer tokens or retry later."
                    )
                )
                continue
            if isinstance(event, LoupeError):
                raise event
            yield event
            if isinstance(event, Finished):
                return

    def _remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline)."""
        if self._deadline is None:
            return None
        return max(self._deadline - time.perf_counter(), 0.0)
