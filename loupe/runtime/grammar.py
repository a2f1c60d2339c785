"""JSON answers: a response format compiled to a grammar (llguidance), and one sequence's matcher of it.

The matcher (loupe/runtime/constraint.py) says which tokens may come next (a bit mask over the
vocabulary, applied to the logits by the sampler) and follows the tokens chosen, so the answer always
parses, and validates against its schema, whatever the weights say.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

import llguidance
import llguidance.hf
import llguidance.torch
import torch

from loupe.errors import InvalidRequest
from loupe.inference import ResponseFormat
from loupe.runtime.constraint import CLOSERS, Constraint

# A fixed layout, no free whitespace: the model cannot spend its tokens on spaces and newlines (a small
# or random model can do so forever); the separators are Python's json.dumps's, which read naturally.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT = {"type": "object"}
KEPT_GRAMMARS = 64  # compiled grammars kept for repeated schemas (a few kB each)
LONGEST_ENDING = 4096  # tokens a schema's shortest answer is looked for within, once, when it is compiled


@dataclass(frozen=True)
class Compiled:
    """A format's grammar, and the length of the ending planned from its start (None: none found)."""

    grammar: str
    shortest: int | None


class Grammars:
    """Compiles response formats for one tokenizer, lazily: the library's view of a vocabulary of 150k tokens
    takes about two seconds to build, paid by the first JSON request, never by a server that gets none."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: set[int]):
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size  # the logits' width: the model's rows past the tokenizer's are never allowed
        self._eos = sorted(eos_ids)
        self._ll: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[ResponseFormat, Compiled] = OrderedDict()
        self._lock = threading.Lock()  # requests' threads check formats; the engine's thread starts matchers

    def tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's tokenizer for the model's, built on first use."""
        with self._lock:
            if self._ll is None:
                self._ll = llguidance.hf.from_tokenizer(self._tokenizer, n_vocab=self.vocab_size, eos_token=self._eos)
            return self._ll

    def compile(self, response_format: ResponseFormat) -> Compiled:
        """The format's grammar; InvalidRequest naming what the library does not support in the schema."""
        with self._lock:
            compiled = self._compiled.get(response_format)
            if compiled is not None:
                self._compiled.move_to_end(response_format)
                return compiled
        schema = json.loads(response_format.schema) if response_format.schema is not None else ANY_OBJECT
        if not isinstance(schema, dict):
            raise InvalidRequest("`response_format.json_schema.schema` must be a JSON object.", param="response_format")
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer())
        if failed:
            raise InvalidRequest(f"The JSON schema cannot be used: {messages[0]}", param="response_format")
        shortest = self._constraint(grammar, LONGEST_ENDING).estimate
        compiled = Compiled(grammar, shortest)
        with self._lock:
            self._compiled[response_format] = compiled
            while len(self._compiled) > KEPT_GRAMMARS:
                self._compiled.popitem(last=False)
        return compiled

    def check_budget(self, response_format: ResponseFormat, max_tokens: int) -> None:
        """Refuse a `max_tokens` below the planned ending from the start: such an answer could only be cut off."""
        shortest = self.compile(response_format).shortest
        if shortest is not None and max_tokens < shortest:
            raise InvalidRequest(
                f"`max_tokens` ({max_tokens}) is below the {shortest} tokens of the shortest answer this schema "
                f"allows; ask for at least {shortest}.",
                param="max_tokens",
            )

    def matcher(self, response_format: ResponseFormat, max_tokens: int) -> Constraint:
        """A fresh matcher of the format, for one sequence of at most `max_tokens` tokens."""
        return self._constraint(self.compile(response_format).grammar, max_tokens)

    def _constraint(self, grammar: str, max_tokens: int) -> Constraint:
        """A matcher of a compiled grammar, with its ending planned within `max_tokens`."""
        matcher = llguidance.LLMatcher(self.tokenizer(), grammar)
        return Constraint(matcher, self._closers(), self._eos[0], max_tokens)

    def _closers(self) -> list[int]:
        """The tokens an ending prefers, in order: closing a string, an object, an array."""
        ids = [self._tokenizer.convert_tokens_to_ids(text) for text in CLOSERS]
        return [i for i in ids if isinstance(i, int) and i != self._tokenizer.unk_token_id]


def allocate_bitmask(rows: int, vocab_size: int) -> torch.Tensor:
    """An int32 (rows, ceil(vocab / 32)) bit mask on the CPU, every token allowed."""
    return torch.full(llguidance.torch.get_bitmask_shape(rows, vocab_size), -1, dtype=torch.int32)


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set to -inf, in place, each (rows, vocab) logit whose bit is clear in its row of the (rows, words) mask."""
    bitmask = bitmask.to(logits.device, non_blocking=True)
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).view(bitmask.shape[0], -1)[:, : logits.shape[-1]]
    logits.masked_fill_(allowed == 0, float("-inf"))
