"""An LRU store of model KV caches keyed by the token sequence each holds, bounded in tokens.

Follow-up questions start with the whole earlier conversation; reusing its cache means the model
reads only the new tokens, not the image again. Knows nothing of torch: caches are opaque here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

CacheT = TypeVar("CacheT")


@dataclass(frozen=True)
class Match:
    """An entry that shares `shared` leading tokens with a prompt; it holds `length` tokens."""

    entry_id: int
    shared: int
    length: int


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading items two sequences share."""
    n = 0
    for x, y in zip(a, b, strict=False):  # up to the shorter one
        if x != y:
            break
        n += 1
    return n


class PrefixCache(Generic[CacheT]):
    """Entries are taken out while a generation extends them and put back when it ends."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, tuple[tuple[int, ...], CacheT]] = OrderedDict()
        self._next_id = 0
        self._tokens = 0
        self._lock = threading.Lock()

    @property
    def tokens(self) -> int:
        """Tokens held in all entries."""
        return self._tokens

    def find(self, keys: Sequence[int]) -> Match | None:
        """The entry sharing the longest prefix with `keys`, if any shares one."""
        with self._lock:
            best: Match | None = None
            for entry_id, (entry_keys, _) in self._entries.items():
                shared = common_prefix_length(entry_keys, keys)
                if shared and (best is None or shared > best.shared):
                    best = Match(entry_id, shared, len(entry_keys))
            return best

    def take(self, match: Match) -> CacheT | None:
        """Remove an entry to extend it (None if it was evicted meanwhile)."""
        with self._lock:
            entry = self._entries.pop(match.entry_id, None)
            if entry is None:
                return None
            self._tokens -= len(entry[0])
            return entry[1]

    def get(self, match: Match) -> CacheT | None:
        """An entry left in place (to be copied), marked as recently used."""
        with self._lock:
            if match.entry_id not in self._entries:
                return None
            self._entries.move_to_end(match.entry_id)
            return self._entries[match.entry_id][1]

    def put(self, keys: Sequence[int], cache: CacheT) -> None:
        """Keep a cache holding `keys`, evicting the least recently used entries beyond the bound.

        Entries holding `keys` or a prefix of them go: this one serves every prompt they served.
        Without that, asking the same question again (a branch of the cached answer) kept a copy
        per asking: twelve greedy repeats of one question filled 4096 tokens with one conversation.
        """
        keys = tuple(keys)
        if not keys or len(keys) > self.max_tokens:
            return
        with self._lock:
            covered = [
                entry_id for entry_id, (entry_keys, _) in self._entries.items() if keys[: len(entry_keys)] == entry_keys
            ]
            for entry_id in covered:
                self._tokens -= len(self._entries.pop(entry_id)[0])
            self._entries[self._next_id] = (keys, cache)
            self._next_id += 1
            self._tokens += len(keys)
            self._evict_beyond(self.max_tokens)

    def shrink(self, tokens: int) -> None:
        """Evict least recently used entries until at most `tokens` remain (running sequences need the room)."""
        with self._lock:
            self._evict_beyond(max(tokens, 0))

    def _evict_beyond(self, tokens: int) -> None:
        """Least recently used out until the entries hold at most `tokens`; the caller holds the lock."""
        while self._tokens > tokens:
            evicted_keys, _ = self._entries.pop(next(iter(self._entries)))
            self._tokens -= len(evicted_keys)
