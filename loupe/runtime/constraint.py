"""One JSON answer's place in its grammar: the tokens allowed next, and an ending planned to fit `max_tokens`.

A model may never close what it opened: a random one writes one string, or one number's digits,
forever. So each answer keeps a plan of the shortest way it knows to finish (closing what is open,
writing what is required), and once the tokens left come near that plan's length, a token that would
leave the answer unable to finish in time is replaced by the plan's next one. The answer then ends
complete, finish_reason `stop`, instead of cut off; only a `max_tokens` below the schema's shortest
answer still ends it cut off, with `length`.
"""

from __future__ import annotations

import llguidance
import llguidance.torch
import torch

# Byte-level BPE spellings of `"`, `}` and `]`: what an ending tries first, in this order. Otherwise it
# takes the lowest allowed id: single bytes come first, and among them `,` before the digits.
CLOSERS = ('"', "}", "]")
WATCH_MARGIN = 48  # tokens beyond the plan's length from which every step re-plans (one token may lengthen it)
REPLAN_EVERY = 16  # tokens between plans while far from the end


class Constraint:
    """One sequence's matcher: the allowed-token mask, each token followed, the plan to end in time."""

    def __init__(self, matcher: llguidance.LLMatcher, closers: list[int], eos: int, max_tokens: int):
        self.matcher = matcher
        self.closers = closers
        self.eos = eos
        self.left = max_tokens  # tokens still to come, the next one included
        self.plan = self._ending(max_tokens)  # an ending from the current state that fits; None: not known
        self.estimate = None if self.plan is None else len(self.plan)  # the last plan's length; None: gave up

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into row `row` of an int32 (rows, ceil(vocab / 32)) CPU bit mask."""
        llguidance.torch.fill_next_token_bitmask(self.matcher, bitmask, row)

    def accept(self, token: int) -> int:
        """Follow a chosen token, or the plan's instead if the chosen one leaves no ending that fits; which one."""
        self.left -= 1
        planned, self.plan = self.plan, None
        self._consume(token)
        if self.estimate is None:  # no ending fitted max_tokens: the answer may end cut off
            return token
        if planned and token == planned[0]:
            self.plan = planned[1:]
            self.estimate = len(self.plan)
            return token
        far = self.left > self.estimate + WATCH_MARGIN
        if far and self.left % REPLAN_EVERY:  # a plan walks the whole ending: not every step while far
            return token
        plan = self._ending(self.left)
        if plan is None and planned:  # the chosen token leaves no ending that fits: the planned one's does
            self.matcher.rollback(1)
            token, plan = planned[0], planned[1:]
            self._consume(token)
        self.plan = plan
        self.estimate = None if plan is None else len(plan)
        return token

    @property
    def complete(self) -> bool:
        """Whether the grammar is finished: only an end of answer may follow."""
        return self.matcher.is_stopped()

    def _consume(self, token: int) -> None:
        """Advance the matcher; the mask allowed the token, so a refusal is a fault."""
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")

    def _ending(self, limit: int) -> list[int] | None:
        """The tokens of a short ending from here, if one fits `limit`: what the grammar forces, else a closing
        token, else the lowest allowed id. Only the last needs the whole vocabulary's mask."""
        trial = self.matcher.deep_copy()
        plan: list[int] = []
        while not trial.is_stopped():
            if len(plan) >= limit:
                return None
            if trial.is_accepting():  # complete but could go on (a number): the end token closes it
                return [*plan, self.eos]
            tokens = trial.compute_ff_tokens() or [self._next(trial)]
            if tokens[0] < 0 or not trial.consume_tokens(tokens):  # an error reads as stopped: never a plan
                return None
            plan.extend(tokens)
        return plan if len(plan) <= limit else None

    def _next(self, trial: llguidance.LLMatcher) -> int:
        """A closing token the grammar allows here, else its lowest allowed id (-1: none)."""
        for token in self.closers:
            if trial.validate_tokens([token]) == 1:
                return token
        mask = trial.compute_bitmask()
        byte = len(mask) - len(mask.lstrip(b"\0"))
        if byte == len(mask):
            return -1
        return byte * 8 + (mask[byte] & -mask[byte]).bit_length() - 1
