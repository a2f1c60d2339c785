"""Stop strings cut the answer, across token boundaries, without sending the stop text."""

from loupe.engine.stops import StopMatcher


def feed_all(matcher, pieces):
    sent, stopped = [], False
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        sent.append(text)
        if stopped:
            break
    return "".join(sent), stopped


def test_no_stops_passes_text_through():
    assert feed_all(StopMatcher(()), ["a", "b"]) == ("ab", False)


def test_stop_split_across_tokens_is_cut_and_not_sent():
    assert feed_all(StopMatcher(("END",)), ["one E", "N", "D two"]) == ("one ", True)


def test_possible_stop_prefix_is_held_then_released():
    matcher = StopMatcher(("END",))
    assert matcher.feed("ab E") == ("ab ", False)
    assert matcher.feed("x") == ("Ex", False)


def test_held_text_is_flushed_when_the_answer_ends():
    matcher = StopMatcher(("###",))
    assert matcher.feed("done #") == ("done ", False)
    assert matcher.flush() == "#"


def test_earliest_of_several_stops_wins():
    assert feed_all(StopMatcher(("zz", "b")), ["a b zz"]) == ("a ", True)
