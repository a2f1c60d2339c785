"""StreamingEngine on a scripted streaming backend: how many stream at once, the queue, cancelling, failures."""

import threading
from dataclasses import dataclass

import pytest

from loupe.engine.streaming import StreamingEngine
from loupe.errors import ServerBusy, ShuttingDown, UpstreamError
from loupe.inference import ChatRequest, Ending, Finished, Message, SamplingParams, TextDelta, TextPart, Token
from tests.support.engines import wait_ready
from tests.support.waiting import wait_until


@dataclass
class Prompt:
    prompt_tokens: int = 0
    image_tokens: int = 0


class ScriptedStreams:
    """Streams `pieces` for each generation; each piece waits for `gate` (held shut to keep streams open)."""

    name, device, dtype, kernels, cached_tokens = "scripted", "upstream", "unknown", "scripted", 0

    def __init__(self, pieces=("a", "b"), gate=None, fail=None):
        self.pieces, self.gate, self.fail = pieces, gate, fail
        self.open = 0
        self.widest = 0
        self.closed_early = 0
        self.order: list[str] = []
        self.lock = threading.Lock()

    def prepare(self, messages, max_tokens):
        return Prompt()

    def validate(self, sampling):
        pass

    def stream(self, prompt, sampling, cancelled):
        with self.lock:
            self.open += 1
            self.widest = max(self.widest, self.open)
        ended = False
        try:
            for piece in self.pieces:
                while self.gate is not None and not self.gate.wait(0.05):
                    if cancelled():
                        return
                if self.fail is not None:
                    raise self.fail
                yield Token(-1, piece)
            ended = True
            yield Ending("stop", 7, len(self.pieces))
        finally:
            with self.lock:
                self.open -= 1
                self.closed_early += not ended

    def problem(self):
        return None

    def close(self):
        pass


def request(text="Hi", stop=()):
    sampling = SamplingParams(max_tokens=5, temperature=0, top_p=1, top_k=0, presence_penalty=0, stop=stop)
    return ChatRequest((Message("user", (TextPart(text),)),), sampling)


@pytest.fixture
def start():
    started = []

    def make(backend, queue_size=2, max_batch=2, request_timeout=0.0):
        engine = StreamingEngine(lambda: backend, queue_size, max_batch, request_timeout).start()
        started.append(engine)
        return wait_ready(engine)

    yield make
    for engine in started:
        engine.close()


def answer(generation):
    text = "".join(e.text for e in generation if isinstance(e, TextDelta))
    return text


def test_an_answer_and_the_engines_counts(start):
    engine = start(ScriptedStreams(("Hel", "lo")))
    events = list(engine.submit(request()))
    finished = events[-1]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello"
    assert isinstance(finished, Finished) and finished.finish_reason == "stop"
    assert finished.prompt_tokens == 7 and finished.completion_tokens == 2


def test_at_most_max_batch_stream_at_once_and_the_rest_wait_in_order(start):
    gate = threading.Event()
    backend = ScriptedStreams(gate=gate)
    engine = start(backend, queue_size=2, max_batch=2)
    generations = [engine.submit(request(str(n))) for n in range(4)]
    wait_until(lambda: backend.open == 2, 5)
    assert engine.running == 2 and engine.queue_depth == 2
    with pytest.raises(ServerBusy):
        engine.submit(request("one too many"))
    gate.set()
    assert [answer(g) for g in generations] == ["ab"] * 4
    assert backend.widest == 2


def test_a_cancelled_generation_closes_its_stream_and_frees_its_place(start):
    gate = threading.Event()
    backend = ScriptedStreams(gate=gate)
    outcomes = []
    engine = start(backend, max_batch=1)
    engine.add_observer(lambda outcome, timings: outcomes.append(outcome))
    first = engine.submit(request())
    wait_until(lambda: backend.open == 1, 5)
    first.cancel()
    wait_until(lambda: backend.open == 0, 5)
    assert backend.closed_early == 1 and outcomes == ["cancelled"]
    gate.set()
    assert answer(engine.submit(request())) == "ab"  # its place was freed


def test_loupes_own_stop_string_ends_the_answer_and_the_stream(start):
    backend = ScriptedStreams(("one ", "STOP", " never"))
    engine = start(backend)
    assert answer(engine.submit(request(stop=("STOP",)))) == "one "
    wait_until(lambda: backend.open == 0, 5)
    assert backend.closed_early == 1


def test_an_upstream_failure_reaches_the_client_as_it_is(start):
    outcomes = []
    engine = start(ScriptedStreams(fail=UpstreamError("the engine behind broke")))
    engine.add_observer(lambda outcome, timings: outcomes.append(outcome))
    with pytest.raises(UpstreamError, match="the engine behind broke"):
        list(engine.submit(request()))
    wait_until(lambda: outcomes == ["error"], 5)


def test_a_stream_without_an_ending_is_a_server_fault_not_a_hang(start):
    class NoEnding(ScriptedStreams):
        def stream(self, prompt, sampling, cancelled):
            yield Token(-1, "half")

    engine = start(NoEnding())
    with pytest.raises(Exception, match="generation failed"):
        list(engine.submit(request()))


def test_closing_ends_running_and_queued_generations(start):
    gate = threading.Event()
    backend = ScriptedStreams(gate=gate)
    engine = start(backend, max_batch=1)
    running, queued = engine.submit(request()), engine.submit(request())
    wait_until(lambda: backend.open == 1, 5)
    engine.close()
    for generation in (running, queued):
        with pytest.raises(ShuttingDown):
            list(generation)
    assert backend.open == 0 and backend.closed_early == 1
