"""The prefix cache store: longest-prefix lookup, take/get, LRU eviction by tokens, no redundant entries."""

from loupe.runtime.prefix_cache import PrefixCache, common_prefix_length


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2], [1, 2]) == 2


def test_find_picks_the_longest_shared_prefix():
    store = PrefixCache(100)
    store.put([1, 2, 3, 4, 5, 6], "long")
    store.put([1, 2, 4], "branch")
    store.put([9, 9], "other")
    match = store.find([1, 2, 3, 4, 5, 7])
    assert (match.shared, match.length) == (5, 6)
    assert store.get(match) == "long" and store.tokens == 11
    assert store.find([8]) is None


def test_an_entry_replaces_those_it_extends_or_repeats():
    store = PrefixCache(100)
    store.put([1, 2, 3], "asked")
    store.put([1, 2, 3], "asked again")  # the same question, the same greedy answer
    store.put([1, 2, 3, 4, 5], "followed up")
    store.put([1, 2, 7], "a branch")  # shares a prefix but extends none: both stay
    assert store.tokens == 8
    assert store.get(store.find([1, 2, 3])) == "followed up"
    assert store.get(store.find([1, 2, 7])) == "a branch"


def test_take_removes_and_get_leaves_in_place():
    store = PrefixCache(100)
    store.put([1, 2], "a")
    match = store.find([1, 2, 3])
    assert store.get(match) == "a" and store.tokens == 2
    assert store.take(match) == "a" and store.tokens == 0
    assert store.take(match) is None and store.find([1, 2]) is None


def test_least_recently_used_entries_go_first_beyond_the_bound():
    store = PrefixCache(10)
    store.put([1] * 4, "a")
    store.put([2] * 4, "b")
    store.get(store.find([1]))  # "a" is now the most recently used
    store.put([3] * 4, "c")
    assert store.find([2]) is None
    assert store.get(store.find([1])) == "a" and store.get(store.find([3])) == "c"
    assert store.tokens == 8


def test_an_entry_larger_than_the_whole_store_is_not_kept():
    store = PrefixCache(3)
    store.put([1, 2, 3, 4], "big")
    assert store.tokens == 0 and store.find([1]) is None


def test_shrinking_evicts_the_least_recently_used_to_make_room():
    store = PrefixCache(10)
    store.put([1] * 3, "a")
    store.put([2] * 3, "b")
    store.put([3] * 3, "c")
    store.get(store.find([1]))  # "a" is now the most recently used
    store.shrink(6)
    assert store.find([2]) is None and store.tokens == 6
    store.shrink(-5)  # running sequences need more than the whole bound: nothing is kept
    assert store.tokens == 0 and store.find([1]) is None and store.find([3]) is None
