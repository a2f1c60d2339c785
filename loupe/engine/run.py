"""One generation in the engine's batch: its timings, stop strings and token count, turned into events."""

from __future__ import annotations

import time
from typing import Any

from loupe.engine.generation import Generation
from loupe.engine.stops import StopMatcher
from loupe.inference import Ending, Finished, Started, TextDelta, Timings, Token


class Run:
    """One generation in the batch: its timings, stop strings and token count, turned into events."""

    def __init__(self, generation: Generation, counts_tokens: bool = True):
        self.generation = generation
        # False: the tokens are pieces of an engine's stream, which keeps max_tokens itself (a piece may hold
        # several tokens) and says how it ended (`end`).
        self.counts_tokens = counts_tokens
        self.sampling = generation.request.sampling
        prompt = generation.prompt
        self.timings = Timings(image_tokens=prompt.image_tokens, prompt_tokens=prompt.prompt_tokens)
        self.began = time.perf_counter()
        self.timings.queue_ms = (self.began - generation.submitted) * 1000
        self.matcher = StopMatcher(self.sampling.stop)
        self.count = 0
        self.first_at: float | None = None
        self.sequence: Any = None  # the backend's, once it has read the prompt
        self.outcome = "cancelled"  # until it finishes: `stop` or `length`
        generation.put(Started())

    def on_token(self, token: Token) -> bool:
        """Send what the token adds to the answer; True when the generation is over."""
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
            self.timings.cached_tokens = token.cached_prompt_tokens
            self.timings.prompt_ms = (now - self.began) * 1000
            self.timings.ttft_ms = (now - self.generation.submitted) * 1000
        self.timings.decode_ms = (now - self.first_at) * 1000
        self.count += 1
        if token.eos:
            return self._finish("stop")
        text, stopped = self.matcher.feed(token.text)
        if text:
            self.generation.put(TextDelta(text))
        if stopped:  # the stop string itself is never sent
            return self._finish("stop", flush=False)
        if token.complete:  # a JSON answer's grammar is done: nothing may follow, no pass is spent on an end token
            return self._finish("stop")
        if self.counts_tokens and self.count >= self.sampling.max_tokens:
            return self._finish("length")
        return False

    def end(self, ending: Ending) -> None:
        """Finish as the engine behind the API said, with its token counts where it gave them."""
        if ending.prompt_tokens is not None:
            self.timings.prompt_tokens = ending.prompt_tokens
        self.timings.cached_tokens = ending.cached_tokens
        if ending.completion_tokens is not None:
            self.count = ending.completion_tokens
        self._finish(ending.finish_reason)

    def _finish(self, reason: str, flush: bool = True) -> bool:
        """Send held-back text (it was no stop string after all) and the Finished event."""
        if flush and (rest := self.matcher.flush()):
            self.generation.put(TextDelta(rest))
        self.timings.completion_tokens = self.count
        self.outcome = reason
        self.generation.put(Finished(reason, self.timings.prompt_tokens, self.count, self.timings))
        return True
