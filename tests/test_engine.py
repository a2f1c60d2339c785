"""The engine's scheduling: loading states, one generation at a time, a bounded queue, cancel, stops.

These tests drive the engine with a scripted backend so that queue states can be held still;
the model itself is exercised in test_model.py and test_api.py.
"""

import threading

import pytest

from loupe.errors import GenerationFailed, ModelUnavailable, ServerBusy, ShuttingDown
from loupe.inference import Finished, Started, TextDelta
from tests.support.engines import running_engines
from tests.support.fakes import ScriptedBackend, chat
from tests.support.waiting import wait_until


def test_events_of_a_whole_generation(engines):
    engine = engines.ready(ScriptedBackend(["Hel", "lo"]))
    events = list(engine.submit(chat()))
    assert isinstance(events[0], Started)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hel", "lo"]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert (finished.finish_reason, finished.completion_tokens, finished.prompt_tokens) == ("stop", 3, 5)


def test_max_tokens_ends_with_length(engines):
    engine = engines.ready(ScriptedBackend(["a", "b", "c"]))
    finished = list(engine.submit(chat(max_tokens=2)))[-1]
    assert (finished.finish_reason, finished.completion_tokens) == ("length", 2)


def test_stop_string_ends_with_stop_and_is_not_sent(engines):
    engine = engines.ready(ScriptedBackend(["one ", "EN", "D two"], eos_at_end=False))
    events = list(engine.submit(chat(stop=("END",))))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "one "
    assert events[-1].finish_reason == "stop"


def test_while_loading_and_after_a_failed_load_requests_get_503(engines):
    release = threading.Event()

    def slow_load():
        release.wait(5)
        raise OSError("no such model")

    engine = engines.start(slow_load, 2)
    assert engine.status == "loading"
    with pytest.raises(ModelUnavailable, match="loading"):
        engine.submit(chat())
    release.set()
    wait_until(lambda: engine.status == "error", message="the load to fail")
    assert engine.error == "no such model"
    with pytest.raises(ModelUnavailable, match="no such model"):
        engine.submit(chat())


def test_a_full_queue_answers_busy_and_frees_up_after(engines):
    gate = threading.Event()
    backend = ScriptedBackend(["x"] * 3, gate=gate)
    engine = engines.ready(backend, queue_size=1)
    running = engine.submit(chat())
    assert backend.started.wait(5)  # the first generation is running
    waiting = engine.submit(chat())  # one may wait
    with pytest.raises(ServerBusy):
        engine.submit(chat())
    gate.set()
    assert list(running)[-1].finish_reason == "stop"
    assert list(waiting)[-1].finish_reason == "stop"
    assert list(engine.submit(chat()))[-1].finish_reason == "stop"


def test_cancel_stops_a_running_generation(engines):
    gate = threading.Event()
    backend = ScriptedBackend(["x"] * 1000, gate=gate)
    engine = engines.ready(backend)
    generation = engine.submit(chat(max_tokens=1000))
    assert backend.started.wait(5)
    generation.cancel()
    gate.set()
    follow_up = engine.submit(chat(max_tokens=1))
    assert list(follow_up)[-1].completion_tokens == 1
    assert backend.tokens_made < 1000 and backend.tokens_made <= 3


def test_a_request_cancelled_while_queued_never_runs(engines):
    gate = threading.Event()
    backend = ScriptedBackend(["x"] * 2, gate=gate)
    engine = engines.ready(backend)
    first = engine.submit(chat())
    assert backend.started.wait(5)
    queued = engine.submit(chat())
    queued.cancel()
    gate.set()
    list(first)
    list(engine.submit(chat()))
    assert backend.tokens_made == 6  # first and last sampled "x", "x" and the end each; the cancelled none


def test_a_backend_failure_reaches_the_consumer_as_a_server_error(engines):
    engine = engines.ready(ScriptedBackend(["a", "b"], fail_after=1))
    with pytest.raises(GenerationFailed):
        list(engine.submit(chat()))
    assert list(engine.submit(chat(max_tokens=1)))[-1].completion_tokens == 1  # the engine lives on


def test_concurrent_generations_are_decoded_together_and_each_gets_its_own_answer(engines):
    gate = threading.Event()
    backend = ScriptedBackend(["a", "b", "c"], gate=gate)
    engine = engines.ready(backend, queue_size=0, max_batch=3)
    generations = [engine.submit(chat(max_tokens=n)) for n in (3, 2, 1)]  # joining one per step, all overlap
    with pytest.raises(ServerBusy):
        engine.submit(chat())  # three in the batch, none may wait
    gate.set()
    results = [list(g) for g in generations]
    assert backend.widest_batch == 3
    assert ["".join(e.text for e in r if isinstance(e, TextDelta)) for r in results] == ["abc", "ab", "a"]
    assert [r[-1].finish_reason for r in results] == ["length", "length", "length"]
    assert backend.batch == []


def test_each_new_request_gets_its_first_token_before_the_next_is_read(engines):
    gate = threading.Event()
    backend = ScriptedBackend(["a", "b"], gate=gate)
    engine = engines.ready(backend, queue_size=2, max_batch=3)
    first = engine.submit(chat())
    assert backend.started.wait(5)
    waiting = [engine.submit(chat()), engine.submit(chat())]  # a burst, queued while the first runs
    gate.set()
    for generation in [first, *waiting]:
        list(generation)
    starts = [i for i, call in enumerate(backend.calls) if call == "start"]
    assert len(starts) == 3
    assert "sample" in backend.calls[starts[1] : starts[2]]  # the second was sampled before the third was read


def test_close_ends_running_and_queued_generations_and_the_worker(engines):
    before = running_engines()
    gate = threading.Event()
    backend = ScriptedBackend(["x"] * 1000, gate=gate)
    engine = engines.ready(backend, queue_size=1)
    running = engine.submit(chat(max_tokens=1000))
    assert backend.started.wait(5)
    queued = engine.submit(chat(max_tokens=1000))
    gate.set()
    engine.close()
    for generation in (running, queued):
        with pytest.raises(ShuttingDown):
            list(generation)
    assert running_engines() == before
    assert backend.batch == []  # the running sequence was released
    with pytest.raises(ShuttingDown):
        engine.submit(chat())


def test_aborting_reaches_a_generation_whose_prompt_is_being_read(engines):
    reading = threading.Event()
    backend = ScriptedBackend(["x"] * 5, prefill_gate=reading)
    engine = engines.ready(backend)
    generation = engine.submit(chat())
    assert backend.started.wait(5)  # off the queue, not yet in the batch
    assert engine.abort_all(ShuttingDown("The server stopped before this generation finished.")) == 1
    reading.set()
    with pytest.raises(ShuttingDown):
        list(generation)
    wait_until(lambda: not engine.running, message="the aborted generation to leave the batch")
    assert backend.tokens_made == 0 and backend.batch == []
