"""Choosing tokens and turning them into text: the per-sequence parts of decoding."""
from __future__ import annotations

import torch

from inference import SamplingParams


class Sampler:
    """Turns logits into a token: penalties on what was generated, then greedy or top-k/top-p sampling."""

    def __init__(self, sampling: SamplingParams):
        self.sampling = sampling
        self.generated: list[int] = []
        self.generator = None
        if sampling.seed is not None:
            self.generator = torch.Generator().manual_seed(sampling.seed)

    def pick(self, logits: torch.Tensor) -> int:
        """The next token id from (1, vocab) logits."""
        s = self.sampling
        logits = logits[0].to(torch.float32, copy=True)  # penalties below write into it
        if self.generated and (s.presence_penalty or s.repetition_penalty != 1.0):
            seen = torch.tensor(sorted(set(self.generated)))
            values = logits[seen]
            values = torch.where(values > 0, values / s.repetition_penalty, values * s.repetition_penalty)
            logits[seen] = values - s.presence_penalty  # OpenAI's presence penalty: additive, once per token
        if s.temperature == 0:
            token = int(torch.argmax(logits))
        else:
            token = self._sample(logits / s.temperature)
        self.generated.append(token)
        return token

    def _sample(self, logits: torch.Tensor) -> int:
        """Top-k, then top-p (nucleus), then a draw."""
        s = self.sampling
        if 0 < s.top_k < logits.numel():
            kth = torch.topk(logits, s.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if s.top_p < 1.0:
            ordered, order = torch.sort(logits, descending=True)
            cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
            drop = cumulative - torch.softmax(ordered, dim=-1) >= s.top_p  # keep the token crossing top_p
            logits = logits.scatter(0, order[drop], float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


class IncrementalDecoder:
    """Token ids → text deltas, holding back bytes until they form whole characters."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def add(self, token: int) -> str:
        """Text that this token completes (may be empty)."""
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""
