"""Choosing tokens and turning them into text: the per-sequence parts of decoding."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from loupe.inference import SamplingParams
from loupe.runtime.grammar import Constraint, allocate_bitmask, apply_bitmask

# Temperatures below this pick greedily. Sampling there is greedy in all but name, and dividing float32
# logits by such a temperature overflows them to inf (or, below float32's range, divides by zero): NaN.
GREEDY_BELOW = 1e-5


class Sampler:
    """One sequence's choice of tokens: penalties on what it generated, then greedy or top-k/top-p sampling.

    `pick_tokens` chooses for every row of a batch at once, on the logits' device: the rows' tokens
    come to the host in one copy per step, not one (or a whole row of logits) per sequence.
    """

    def __init__(self, sampling: SamplingParams, constraint: Constraint | None = None):
        self.sampling = sampling
        self.constraint = constraint  # a JSON answer's grammar: masks the logits, follows each token picked
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
            # The best candidate (before = 0) always stays: top_p = 0 is greedy, not an empty choice (NaN).
            logits = logits.masked_fill((before >= s.top_p) & (before > 0), float("-inf"))
        return torch.softmax(logits, dim=-1), candidates

    def start_penalties(self, vocab: int, device: torch.device) -> None:
        """Make the penalties' state on the logits' device, once per sequence: no step copies it there."""
        self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        penalties = [self.sampling.repetition_penalty, self.sampling.presence_penalty]
        self.penalties = torch.tensor(penalties, dtype=torch.float32, device=device)


def pick_tokens(samplers: Sequence[Sampler], logits: torch.Tensor) -> list[int]:
    """The next token of each row of (rows, vocab) logits, row i chosen by samplers[i]; one copy to the host.

    A step's work does not grow with its rows but for sampled ones (temperature > 0), drawn one by one.
    Temperature 0 (or below GREEDY_BELOW) is greedy. Rows with a grammar (JSON answers) get its mask
    first, so they decode beside free ones, and their grammar follows the token picked.
    """
    logits = logits.to(torch.float32, copy=True)  # the penalties and the grammars' masks write into it
    _constrain(samplers, logits)
    penalised = [i for i, s in enumerate(samplers) if s.penalised]
    for i in penalised:
        if samplers[i].seen is None:
            samplers[i].start_penalties(logits.shape[-1], logits.device)
    index = None if len(penalised) == len(samplers) else torch.tensor(penalised, device=logits.device)
    seen = torch.stack([samplers[i].seen for i in penalised]) if penalised else None
    if seen is not None:
        _penalise(logits, seen, torch.stack([samplers[i].penalties for i in penalised]), index)
    tokens = torch.argmax(logits, dim=-1)  # every row at once; the sampled rows are drawn over it
    for row, sampler in enumerate(samplers):
        if sampler.sampling.temperature >= GREEDY_BELOW:
            tokens[row] = sampler.draw(logits[row])
    if seen is not None:  # mark each row's token in one launch; the rows keep views of the stack
        chosen = tokens if index is None else tokens[index]
        rows = torch.arange(len(penalised), device=seen.device)
        seen.index_put_((rows, chosen), torch.ones((), dtype=torch.bool, device=seen.device))  # no host value
        for i, row_seen in zip(penalised, seen.unbind(0), strict=True):
            samplers[i].seen = row_seen
    picked = tokens.tolist()
    for row, sampler in enumerate(samplers):
        if sampler.constraint is not None:  # near max_tokens, a JSON answer's grammar may pick its ending's token
            picked[row] = sampler.constraint.accept(picked[row])
    return picked


def _constrain(samplers: Sequence[Sampler], logits: torch.Tensor) -> None:
    """Mask, in place, the tokens each constrained row's grammar does not allow next (one mask copy a step)."""
    rows = [(i, s.constraint) for i, s in enumerate(samplers) if s.constraint is not None]
    if not rows:
        return
    bitmask = allocate_bitmask(len(rows), logits.shape[-1])
    for row, (_, constraint) in enumerate(rows):
        constraint.fill(bitmask, row)
    if len(rows) == len(samplers):
        apply_bitmask(logits, bitmask)
        return
    index = torch.tensor([i for i, _ in rows], device=logits.device)
    chosen = logits[index]  # free rows are left alone: masking them too would cost a pass over their logits
    apply_bitmask(chosen, bitmask)
    logits[index] = chosen


def _penalise(logits: torch.Tensor, seen: torch.Tensor, penalties: torch.Tensor, index: torch.Tensor | None) -> None:
    """Penalise in place the logits of the tokens each penalised row has generated (`index`: those rows, None: all)."""
    values = logits if index is None else logits[index]
    repetition, presence = penalties[:, :1], penalties[:, 1:]
    # OpenAI's presence penalty is additive, once per token; the repetition penalty divides what is positive.
    penalised = torch.where(values > 0, values / repetition, values * repetition) - presence
    chosen = torch.where(seen, penalised, values)
    if index is None:
        logits.copy_(chosen)
    else:
        logits[index] = chosen


class IncrementalDecoder:
    """Token ids → text deltas, holding back bytes until they form whole characters."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # The Rust tokenizer itself where transformers' decode would add nothing to it (no clean-up): two
        # decodes a token for every running sequence, and the wrapper's checks cost more than the decoding.
        fast = getattr(tokenizer, "backend_tokenizer", None)
        plain = fast is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True)
        self._decode = fast.decode if plain else tokenizer.decode
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def add(self, token: int) -> str:
        """Text that this token completes (may be empty)."""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = self._decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""
