"""Choosing tokens and turning them into text: the per-sequence parts of decoding."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from loupe.inference import SamplingParams


class Sampler:
    """One sequence's choice of tokens: penalties on what it generated, then greedy or top-k/top-p sampling.

    `pick_tokens` chooses for every row of a batch at once, on the logits' device: the rows' tokens
    come to the host in one copy per step, not one (or a whole row of logits) per sequence.
    """

    def __init__(self, sampling: SamplingParams):
        self.sampling = sampling
        self.seen: torch.Tensor | None = None  # (vocab,) bool on the logits' device: tokens generated so far
        self.generator: torch.Generator | None = None  # made on the logits' device at the first draw
        self.penalties: torch.Tensor | None = None  # (repetition, presence) on that device, with `seen`

    @property
    def penalised(self) -> bool:
        """Whether tokens already generated are penalised."""
        return bool(self.sampling.presence_penalty) or self.sampling.repetition_penalty != 1.0

    def pick(self, logits: torch.Tensor) -> int:
        """The next token id from (1, vocab) logits (the caller's logits are left alone)."""
        return pick_tokens([self], logits)[0]

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        """A token drawn from one row's penalised (vocab,) logits after temperature, top-k, top-p; stays on device."""
        if self.generator is None and self.sampling.seed is not None:
            self.generator = torch.Generator(logits.device).manual_seed(self.sampling.seed)
        probs, candidates = self.distribution(logits / self.sampling.temperature)
        return candidates[torch.multinomial(probs, 1, generator=self.generator)][0]  # indexed by a tensor: no sync

    def distribution(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, token ids) of the candidates left after top-k and top-p."""
        s = self.sampling
        # Narrow to the k best first: sorting k candidates instead of the whole vocabulary (150k
        # entries) takes the sampler from milliseconds to microseconds per token.
        if 0 < s.top_k < logits.numel():
            logits, candidates = torch.topk(logits, s.top_k)  # sorted, best first
        elif s.top_p < 1.0:
            logits, candidates = torch.sort(logits, descending=True)
        else:
            return torch.softmax(logits, dim=-1), torch.arange(logits.numel(), device=logits.device)
        if s.top_p < 1.0:
            probs = torch.softmax(logits, dim=-1)
            before = probs.cumsum(-1) - probs  # mass of the better candidates: keep the one crossing top_p
            logits = logits.masked_fill(before >= s.top_p, float("-inf"))
        return torch.softmax(logits, dim=-1), candidates

    def note(self, token: torch.Tensor, vocab: int) -> None:
        """Remember a generated token (a 0-d tensor on the logits' device) for the penalties."""
        if self.seen is None:  # made once per sequence: a step then copies nothing to the device for them
            self.seen = torch.zeros(vocab, dtype=torch.bool, device=token.device)
            penalties = [self.sampling.repetition_penalty, self.sampling.presence_penalty]
            self.penalties = torch.tensor(penalties, dtype=torch.float32, device=token.device)
        self.seen.index_fill_(0, token.view(1), True)


def pick_tokens(samplers: Sequence[Sampler], logits: torch.Tensor) -> list[int]:
    """The next token of each row of (rows, vocab) logits, row i chosen by samplers[i]; one copy to the host."""
    logits = logits.to(torch.float32, copy=True)  # the penalties write into it
    _penalise(samplers, logits)
    tokens = torch.argmax(logits, dim=-1)  # every row at once; the sampled rows are drawn over it
    for row, sampler in enumerate(samplers):
        if sampler.sampling.temperature != 0:
            tokens[row] = sampler.draw(logits[row])
        if sampler.penalised:
            sampler.note(tokens[row], logits.shape[-1])
    return tokens.tolist()


def _penalise(samplers: Sequence[Sampler], logits: torch.Tensor) -> None:
    """Penalise in place, on the device, the logits of tokens each row has generated (rows with penalties)."""
    rows = [i for i, s in enumerate(samplers) if s.penalised and s.seen is not None]
    if not rows:
        return
    every = len(rows) == len(samplers)  # the usual case: no index to copy to the device
    index = None if every else torch.tensor(rows, device=logits.device)
    values = logits if index is None else logits[index]
    penalties = torch.stack([samplers[i].penalties for i in rows])
    repetition, presence = penalties[:, :1], penalties[:, 1:]
    # OpenAI's presence penalty is additive, once per token; the repetition penalty divides what is positive.
    penalised = torch.where(values > 0, values / repetition, values * repetition) - presence
    chosen = torch.where(torch.stack([samplers[i].seen for i in rows]), penalised, values)
    if index is None:
        logits.copy_(chosen)
    else:
        logits[index] = chosen


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
        before = self.tokenizer.decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""
