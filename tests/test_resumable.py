"""Resumable streams without HTTP (loupe/engine/resumable.py): numbering, readers, the countdown, retention."""

import threading

import pytest

from loupe.engine.generation import Generation
from loupe.engine.resumable import STREAM_OVERHEAD, ResumableStreams
from loupe.errors import ClientClosedRequest, NotFound
from loupe.inference import ChatRequest, Finished, SamplingParams, TextDelta
from tests.support.waiting import wait_until

REQUEST = ChatRequest(messages=(), sampling=SamplingParams(8, 0.0, 1.0, 0, 0.0))


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def frames_of(events):
    """The frames a stream keeps: one per event, an error as its own frame, as stream_frames does."""
    try:
        for event in events:
            yield f"{type(event).__name__}:{getattr(event, 'text', getattr(event, 'finish_reason', ''))}"
    except ClientClosedRequest as error:
        yield f"error:{error.message}"


def opened(streams, owner="", generation=None):
    """A stream on a real Generation the test feeds by hand; (stream, generation, closed event)."""
    generation = generation or Generation(REQUEST, prompt=None)
    closed = threading.Event()
    stream = streams.open(owner, generation, frames_of, stop=generation.fail, close=closed.set)
    return stream, generation, closed


def finish(generation, *texts):
    for text in texts:
        generation.put(TextDelta(text))
    generation.put(Finished("stop", 3, len(texts)))


def test_frames_are_numbered_from_one_and_a_reader_gets_those_after_its_last():
    streams = ResumableStreams(30, 60, 1 << 20)
    stream, generation, closed = opened(streams)
    finish(generation, "a", "b", "c")
    assert closed.wait(5)
    assert list(streams.read(stream, 0)) == [
        (1, "TextDelta:a"),
        (2, "TextDelta:b"),
        (3, "TextDelta:c"),
        (4, "Finished:stop"),
    ]
    assert list(streams.read(stream, 2)) == [(3, "TextDelta:c"), (4, "Finished:stop")]
    assert list(streams.read(stream, 4)) == []
    assert stream.outcome == "stop" and stream.finished is not None and stream.finished.completion_tokens == 3


def test_a_reader_follows_frames_as_they_come_and_the_generation_goes_on_without_one():
    streams = ResumableStreams(30, 60, 1 << 20)
    stream, generation, closed = opened(streams)
    reader = streams.read(stream, 0)
    generation.put(TextDelta("first"))
    assert next(reader) == (1, "TextDelta:first")
    reader.close()  # the connection dropped
    finish(generation, "second", "third")  # the generation carries on
    assert closed.wait(5)
    assert [frame for _, frame in streams.read(stream, 1)] == ["TextDelta:second", "TextDelta:third", "Finished:stop"]
    assert not generation.cancelled or stream.outcome == "stop"


def test_nobody_reading_for_the_resume_seconds_stops_the_generation():
    told = []
    streams = ResumableStreams(0.2, 60, 1 << 20)
    streams.add_observer(told.append)
    stream, generation, closed = opened(streams)
    reader = streams.read(stream, 0)
    generation.put(TextDelta("only"))
    next(reader)
    reader.close()
    assert closed.wait(10), "the generation was not stopped"
    assert generation.cancelled and stream.outcome == "cancelled"
    frames = [frame for _, frame in streams.read(stream, 1)]
    assert frames == [f"error:{frames[0].removeprefix('error:')}"] and "STREAM_RESUME_SECONDS (0.2 s)" in frames[0]
    assert told == ["opened", "abandoned"]


def test_a_reader_that_comes_back_in_time_keeps_the_generation_running():
    streams = ResumableStreams(0.3, 60, 1 << 20)
    stream, generation, closed = opened(streams)
    reader = streams.read(stream, 0)
    generation.put(TextDelta("a"))
    next(reader)
    reader.close()
    again = streams.read(stream, 1, resumed=True)
    generation.put(TextDelta("b"))
    assert next(again) == (2, "TextDelta:b")  # attached now: no countdown runs
    assert not closed.wait(0.6)
    assert not generation.cancelled
    finish(generation)
    assert [frame for _, frame in again] == ["Finished:stop"]


def test_a_stream_nobody_ever_reads_is_stopped_too():
    streams = ResumableStreams(0.2, 60, 1 << 20)
    stream, generation, closed = opened(streams)
    assert closed.wait(10)
    assert generation.cancelled and stream.outcome == "cancelled"


def test_cancel_stops_the_generation_at_once_and_only_once():
    told = []
    streams = ResumableStreams(30, 60, 1 << 20)
    streams.add_observer(told.append)
    stream, generation, closed = opened(streams)
    stream.cancel()
    stream.cancel()
    assert closed.wait(5) and generation.cancelled
    assert told == ["opened", "cancelled"]


def test_only_the_owner_finds_a_stream_and_an_unknown_id_is_404():
    streams = ResumableStreams(30, 60, 1 << 20)
    stream, generation, _ = opened(streams, owner="digest-of-key-a")
    assert streams.find(stream.id, "digest-of-key-a") is stream
    for stream_id, owner in ((stream.id, "digest-of-key-b"), (stream.id, ""), ("0" * 32, "digest-of-key-a")):
        with pytest.raises(NotFound) as caught:
            streams.find(stream_id, owner)
        assert caught.value.code == "stream_not_found"
    generation.fail(ClientClosedRequest("done with it"))


def test_ended_streams_are_forgotten_after_the_replay_seconds():
    clock = Clock()
    streams = ResumableStreams(30, 60, 1 << 20, clock=clock)
    stream, generation, closed = opened(streams)
    finish(generation, "a")
    assert closed.wait(5)
    wait_until(lambda: stream.ended, message="the stream to end")
    clock.now += 59
    assert streams.find(stream.id, "") is stream
    clock.now += 2
    with pytest.raises(NotFound):
        streams.find(stream.id, "")
    assert streams.count == 0 and streams.bytes == 0


def test_past_the_replay_bytes_the_first_ended_go_first_and_running_ones_stay():
    told = []
    clock = Clock()
    streams = ResumableStreams(30, 60, 3 * STREAM_OVERHEAD + 2000, clock=clock)
    streams.add_observer(told.append)
    running, running_generation, _ = opened(streams)
    running_generation.put(TextDelta("x" * 1500))
    wait_until(lambda: running.count == 1, message="the running stream's frame")
    ended = []
    for _ in range(3):
        stream, generation, closed = opened(streams)
        finish(generation, "y" * 200)
        assert closed.wait(5)
        wait_until(lambda s=stream: s.ended, message="the stream to end")
        clock.now += 1
        ended.append(stream)
    # Running (1,500 bytes and more) and the three ended (about 300 each) do not fit: the first to end went.
    assert streams.bytes <= streams.max_bytes
    assert told.count("evicted") >= 1
    with pytest.raises(NotFound):
        streams.find(ended[0].id, "")
    assert streams.find(ended[-1].id, "") is ended[-1]
    assert streams.find(running.id, "") is running
    running_generation.fail(ClientClosedRequest("done with it"))
