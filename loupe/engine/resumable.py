"""Resumable streams: a streamed generation's frames, kept so that a client whose connection dropped can
reconnect and read the rest; the generation goes on while one may come back.

Knows nothing about HTTP: frames are opaque strings numbered from 1, which the web layer sends as
Server-Sent Events with ids. One thread per stream (the pump) drains the generation into its frames,
so the generation no longer depends on any one connection; readers follow the frames, each from its own
position.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from loupe.errors import ClientClosedRequest, LoupeError, NotFound
from loupe.inference import Event, Finished

log = logging.getLogger(__name__)

# Told of what happens to streams: opened, resumed, not_found, abandoned, cancelled, evicted.
StreamObserver = Callable[[str], None]
# Ends a generation with an error (Generation.fail): how a stream stops the generation behind it.
Stop = Callable[[LoupeError], None]

# Bytes counted per frame and per stream besides the frames' text: list slots, string headers, the objects
# themselves. A rough figure, so that many tiny streams count for something against STREAM_REPLAY_BYTES.
FRAME_OVERHEAD = 80
STREAM_OVERHEAD = 2048


class ResumableStream:
    """One generation's frames, its readers and, while nobody reads it, the countdown to stopping it."""

    def __init__(self, stream_id: str, owner: str, stop: Stop, resume_seconds: float, tell: StreamObserver):
        self.id = stream_id
        self.owner = owner
        self.size = STREAM_OVERHEAD
        self.ended_at: float | None = None  # monotonic time the pump finished
        self.outcome: str | None = None  # stop, length, cancelled or error, once ended
        self.finished: Finished | None = None
        self._stop = stop
        self._resume_seconds = resume_seconds
        self._tell = tell
        self._frames: list[str] = []
        self._readers = 0
        self._timer: threading.Timer | None = None
        self._stopped = False
        self._changed = threading.Condition()

    @property
    def count(self) -> int:
        """Frames so far; the last one's number."""
        return len(self._frames)

    @property
    def ended(self) -> bool:
        """Whether the generation is over and every frame is here."""
        return self.ended_at is not None

    def append(self, frame: str) -> None:
        """Add the next frame and wake the readers (the pump calls this)."""
        with self._changed:
            self._frames.append(frame)
            self.size += len(frame) + FRAME_OVERHEAD
            self._changed.notify_all()

    def end(self, clock: float) -> None:
        """No more frames will come; nothing is left to stop."""
        with self._changed:
            self.ended_at = clock
            self._cancel_timer()
            self._changed.notify_all()

    def frames_after(self, seen: int) -> tuple[list[str], bool]:
        """The frames after number `seen`, waiting until there is one or the stream ends; and whether it ended."""
        with self._changed:
            while len(self._frames) <= seen and self.ended_at is None:
                self._changed.wait()
            return self._frames[seen:], self.ended_at is not None  # ended: these are the last ones

    def attach(self) -> None:
        """A reader follows the stream: no countdown while it does."""
        with self._changed:
            self._readers += 1
            self._cancel_timer()

    def detach(self) -> None:
        """A reader left; the last one to leave a running stream starts the countdown."""
        with self._changed:
            self._readers -= 1
            if self._readers == 0:
                self.start_countdown()

    def start_countdown(self) -> None:
        """Stop the generation in STREAM_RESUME_SECONDS unless a reader comes (call with no reader attached)."""
        with self._changed:
            if self.ended_at is not None or self._stopped or self._timer is not None:
                return
            self._timer = threading.Timer(self._resume_seconds, self._abandon)
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        """Stop the generation now: its client does not want the rest (DELETE)."""
        if self._stop_once():
            self._stop(ClientClosedRequest("The client cancelled this stream before its answer was finished."))
            self._tell("cancelled")

    def _abandon(self) -> None:
        """The countdown ran out with nobody reading: stop the generation, as a closed stream used to."""
        with self._changed:
            self._timer = None
            if self._readers or self.ended_at is not None:
                return
        if self._stop_once():
            log.info(
                "stream %s: nobody reconnected within %g s; stopping its generation", self.id, self._resume_seconds
            )
            self._stop(
                ClientClosedRequest(
                    f"The client did not reconnect within STREAM_RESUME_SECONDS ({self._resume_seconds:g} s) "
                    "of losing the stream, so its generation was stopped."
                )
            )
            self._tell("abandoned")

    def _stop_once(self) -> bool:
        """Whether this call is the one that stops a still running generation."""
        with self._changed:
            if self._stopped or self.ended_at is not None:
                return False
            self._stopped = True
            self._cancel_timer()
            return True

    def _cancel_timer(self) -> None:
        """Forget the countdown (call holding the condition)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def note(self, events: Iterable[Event]) -> Iterator[Event]:
        """Pass the events through, keeping how the generation ended."""
        try:
            for event in events:
                if isinstance(event, Finished):
                    self.finished, self.outcome = event, event.finish_reason
                yield event
        except ClientClosedRequest:
            self.outcome = "cancelled"
            raise
        except Exception:
            self.outcome = "error"
            raise


class ResumableStreams:
    """Every resumable stream of this process, kept for a time and within a size once ended."""

    def __init__(
        self,
        resume_seconds: float,
        keep_seconds: float,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.resume_seconds = resume_seconds
        self.keep_seconds = keep_seconds
        self.max_bytes = max_bytes
        self._clock = clock
        self._streams: dict[str, ResumableStream] = {}
        self._lock = threading.Lock()
        self._observers: list[StreamObserver] = []

    def add_observer(self, observer: StreamObserver) -> None:
        """Call `observer(event)` for each thing that happens to a stream (metrics use this)."""
        self._observers.append(observer)

    def open(
        self,
        owner: str,
        events: Iterable[Event],
        to_frames: Callable[[Iterable[Event]], Iterable[str]],
        stop: Stop,
        close: Callable[[], None],
    ) -> ResumableStream:
        """Start pumping a generation's frames into a new stream; `close` runs once the generation is over.

        `owner` is what a reader must show to read it (a digest of its API key, "" when keys are off).
        """
        stream = ResumableStream(secrets.token_hex(16), owner, stop, self.resume_seconds, self._tell)
        with self._lock:
            self._prune()
            self._streams[stream.id] = stream
        stream.start_countdown()  # until its first reader comes: a client gone before reading is gone too
        frames = to_frames(stream.note(events))
        threading.Thread(target=self._pump, args=(stream, frames, close), name="loupe-stream", daemon=True).start()
        self._tell("opened")
        return stream

    def find(self, stream_id: str, owner: str) -> ResumableStream:
        """The stream `stream_id` if `owner` may read it; 404 otherwise (another key's stream is not shown)."""
        with self._lock:
            self._prune()
            stream = self._streams.get(stream_id)
        if stream is None or not hmac.compare_digest(stream.owner, owner):
            self._tell("not_found")
            raise NotFound(
                f"No stream {stream_id} to resume: it never existed, belongs to another API key, ended more than "
                "STREAM_REPLAY_SECONDS ago or was dropped to keep within STREAM_REPLAY_BYTES.",
                param="stream_id",
                code="stream_not_found",
            )
        return stream

    def read(self, stream: ResumableStream, seen: int, resumed: bool = False) -> Iterator[tuple[int, str]]:
        """(number, frame) for each frame after number `seen`, as they come, until the stream ends."""
        if resumed:
            self._tell("resumed")
        stream.attach()
        try:
            while True:
                frames, ended = stream.frames_after(seen)
                for frame in frames:
                    seen += 1
                    yield seen, frame
                if ended:
                    return
        finally:
            stream.detach()

    @property
    def count(self) -> int:
        """Streams kept, running or ended."""
        with self._lock:
            self._prune()
            return len(self._streams)

    @property
    def bytes(self) -> int:
        """Bytes of frames (and their bookkeeping) kept."""
        with self._lock:
            self._prune()
            return sum(stream.size for stream in self._streams.values())

    def _pump(self, stream: ResumableStream, frames: Iterable[str], close: Callable[[], None]) -> None:
        """Drain the generation into the stream, whoever is reading; then settle it and end the stream."""
        try:
            for frame in frames:
                stream.append(frame)
        except Exception:  # the frames turn errors into error frames; anything else is a bug, logged
            log.exception("stream %s failed", stream.id)
        finally:
            try:
                close()
            finally:
                stream.end(self._clock())
                with self._lock:
                    self._prune()

    def _prune(self) -> None:
        """Forget ended streams past STREAM_REPLAY_SECONDS, then the oldest ended ones past STREAM_REPLAY_BYTES.

        Running streams are never dropped: there are at most MAX_BATCH + QUEUE_SIZE of them, each bounded
        by MAX_NEW_TOKENS_LIMIT. Call holding the lock.
        """
        now = self._clock()
        ended = sorted((s for s in self._streams.values() if s.ended_at is not None), key=lambda s: s.ended_at or 0)
        for stream in ended:
            if now - (stream.ended_at or now) >= self.keep_seconds:
                del self._streams[stream.id]
        total = sum(stream.size for stream in self._streams.values())
        for stream in ended:
            if total <= self.max_bytes:
                break
            if stream.id in self._streams:
                del self._streams[stream.id]
                total -= stream.size
                self._tell("evicted")

    def _tell(self, event: str) -> None:
        """Tell the observers; their failures are logged and never break a stream."""
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                log.exception("stream observer %r failed", observer)
