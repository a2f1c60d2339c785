"""Qwen3-VL on torch behind the engine's Backend interface: prefill (reusing cached prefixes) and batch steps."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import DynamicCache

from loupe.inference import ImagePart, Message, SamplingParams, TextPart, Token
from loupe.runtime.batch import DecodeBatch
from loupe.runtime.cache import ROOM, fit_cache, new_cache
from loupe.runtime.decode_step import decode_step
from loupe.runtime.grammar import Grammars
from loupe.runtime.memory import return_free_memory
from loupe.runtime.prefix_cache import PrefixCache
from loupe.runtime.prompts import PromptBuilder, QwenPrompt
from loupe.runtime.sampling import IncrementalDecoder, Sampler, pick_tokens
from loupe.settings import Settings

MIN_SHARED_TO_COPY = 32  # a shorter shared prefix (a system prompt, say) is cheaper to recompute than copy
WARM_UP = SamplingParams(max_tokens=3, temperature=0.0, top_p=1.0, top_k=0, presence_penalty=1.0, ignore_eos=True)


@dataclass(eq=False)  # identity, not value: a sequence is a row of the decode batch
class QwenSequence:
    """One generation in progress: its prompt, sampling state and what the model has read so far."""

    prompt: QwenPrompt
    sampling: SamplingParams
    sampler: Sampler
    decoder: IncrementalDecoder
    delta: int  # M-RoPE: decoding positions run this far from the token count
    fed: list[int]  # prefix-cache keys of everything in the KV cache
    chosen: int  # the next token, picked from the latest logits (on the device, with the batch's)
    cached_prompt_tokens: int
    pending: int | None = None
    intact: bool = True


class QwenBackend:
    """Qwen3-VL behind the engine's Backend interface."""

    def __init__(
        self,
        model,
        tokenizer,
        image_processor,
        eos_ids: set[int],
        name: str,
        settings: Settings,
        kernels: str = "torch",
    ):
        self.model = model
        self.kernels = kernels
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.eos_ids = eos_ids
        self.name = name
        self.device = settings.device
        self.dtype = settings.dtype
        self.on_device = torch.device(settings.device)
        self.on_cpu = self.on_device.type == "cpu"
        self.max_context = settings.max_context_tokens
        self.image_max_edge = settings.image_max_edge
        self.prompts = PromptBuilder(tokenizer, image_processor, model.config.image_token_id, self.max_context)
        self.prefix_cache = PrefixCache(settings.prefix_cache_tokens) if settings.prefix_cache_tokens else None
        self.batch = DecodeBatch(model.config)  # used by the engine's thread only
        self.decode_step = decode_step(model)
        self.grammars = Grammars(tokenizer, model.config.text_config.vocab_size, eos_ids)

    @property
    def cached_tokens(self) -> int:
        """Tokens of earlier conversations kept for follow-up questions (0 without a prefix cache)."""
        return self.prefix_cache.tokens if self.prefix_cache is not None else 0

    def prepare(self, messages: Sequence[Message], max_tokens: int) -> QwenPrompt:
        """The conversation as model inputs (raises InvalidRequest past the context limit)."""
        return self.prompts.build(messages, max_tokens)

    def validate(self, sampling: SamplingParams) -> None:
        """Refuse (InvalidRequest) a schema the grammar library cannot follow, or a `max_tokens` no answer fits."""
        if sampling.response_format.constrained:  # compiled once and kept: `start` finds it
            self.grammars.check_budget(sampling.response_format, sampling.max_tokens)

    @torch.inference_mode()
    def start(self, prompt: QwenPrompt, sampling: SamplingParams) -> QwenSequence:
        """Read a prompt (reusing a cached prefix) and add it to the decode batch."""
        fmt = sampling.response_format
        # Before the prefill: a grammar that fails, fails cheaply.
        constraint = self.grammars.matcher(fmt, sampling.max_tokens) if fmt.constrained else None
        cache, cached, logits, delta = self._prefill(prompt)
        sampler = Sampler(sampling, constraint)
        (token,) = pick_tokens([sampler], logits)
        decoder = IncrementalDecoder(self.tokenizer)
        sequence = QwenSequence(prompt, sampling, sampler, decoder, delta, list(prompt.keys), token, cached)
        self.batch.add(sequence, cache)
        self._release()  # the prefill's activations and the batch's old layers
        return sequence

    def sample(self, sequence: QwenSequence) -> Token:
        """The sequence's next token (picked with its batch's after the last pass); `advance` feeds it to the model."""
        token = sequence.chosen
        sequence.pending = token
        constraint = sequence.sampler.constraint
        # A grammar's answer ends with it (its mask leaves only an end token), `ignore_eos` or not.
        eos = token in self.eos_ids and (not sequence.sampling.ignore_eos or constraint is not None)
        complete = constraint is not None and constraint.complete and not eos
        cached, sequence.cached_prompt_tokens = sequence.cached_prompt_tokens, 0
        return Token(token, "" if eos else sequence.decoder.add(token), eos, complete, cached)

    @torch.inference_mode()
    def advance(self) -> None:
        """One forward pass feeding every sequence in the batch its pending token, then every row's next pick."""
        rows: list[QwenSequence] = self.batch.rows
        positions = [[len(s.fed)] + [len(s.fed) + s.delta] * 3 for s in rows]
        for sequence in rows:
            sequence.intact = False  # a failure inside the pass leaves every cache half-written
        logits = self.batch.forward(self.decode_step, [s.pending for s in rows], positions)
        chosen = pick_tokens([s.sampler for s in rows], logits)  # the step's one copy from the device
        for sequence, token in zip(rows, chosen, strict=True):
            sequence.fed.append(sequence.pending)
            sequence.chosen, sequence.pending, sequence.intact = token, None, True
        self._make_room(0)  # the batch may have grown new room

    def _make_room(self, joining: int) -> None:
        """Evict kept conversations until they, the batch and `joining` positions fit PREFIX_CACHE_TOKENS."""
        if self.prefix_cache is not None:
            self.prefix_cache.shrink(self.prefix_cache.max_tokens - self.batch.positions - joining)

    def finish(self, sequence: QwenSequence) -> None:
        """Take the sequence out of the batch and keep its cache for follow-up questions."""
        own = self.batch.remove(sequence)
        if self.prefix_cache is not None and sequence.intact:
            self.prefix_cache.put(sequence.fed, fit_cache(own))  # no spare room: its bound is its memory
            self._make_room(0)
        del own
        self._release()

    def _release(self) -> None:
        """Hand the C heap's free memory back to the system on a CPU (a GPU's caching allocator keeps its own)."""
        if self.on_cpu:
            return_free_memory()

    def warm_up(self) -> None:
        """A short question about an image of IMAGE_MAX_EDGE, forgotten after: the first request then does not
        pay for the GPU's lazy start (loading the kernels a prompt and a step use, cuBLAS's and cuDNN's set-up)."""
        edge = self.image_max_edge  # the size most images arrive at: their kernels warm too
        image = Image.new("RGB", (edge, edge * 3 // 4), (128, 128, 128))
        prompt = self.prepare([Message("user", (ImagePart(image=image), TextPart("Hello")))], WARM_UP.max_tokens)
        for _ in self.generate(prompt, WARM_UP, lambda: False):
            pass
        if self.prefix_cache is not None:
            self.prefix_cache.shrink(0)

    def generate(self, prompt: QwenPrompt, sampling: SamplingParams, cancelled: Callable[[], bool]) -> Iterator[Token]:
        """One sequence on its own: tokens until an end, the limit, or `cancelled()`."""
        if cancelled():
            return
        sequence = self.start(prompt, sampling)
        try:
            for step in range(sampling.max_tokens):
                token = self.sample(sequence)
                yield token
                if token.eos or token.complete or step + 1 == sampling.max_tokens or cancelled():
                    return
                self.advance()
        finally:
            self.finish(sequence)

    def _prefill(self, prompt: QwenPrompt) -> tuple[DynamicCache, int, torch.Tensor, int]:
        """Read the prompt (only what no cached prefix covers): (cache, reused tokens, logits, rope delta)."""
        positions, delta = self.prompt_positions(prompt)
        cache, start = self._cached_prefix(prompt)
        new_images = [i for i, (first, _) in enumerate(prompt.image_spans) if first >= start]
        pixel_values = grid = None
        if new_images:
            rows = prompt.image_grid_thw.prod(-1).tolist()
            offsets = [sum(rows[:i]) for i in range(len(rows) + 1)]
            pixel_values = torch.cat([prompt.pixel_values[offsets[i] : offsets[i + 1]] for i in new_images])
            grid = prompt.image_grid_thw[new_images]
        device = self.on_device  # the prompt is built on the CPU, by the request's thread
        logits = self.model(
            input_ids=prompt.input_ids[:, start:].to(device),
            pixel_values=None if pixel_values is None else pixel_values.to(device),
            image_grid_thw=None if grid is None else grid.to(device),
            mm_token_type_ids=prompt.mm_token_type_ids[:, start:].to(device),
            position_ids=positions[:, :, start:].to(device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        return cache, start, logits, delta

    def _cached_prefix(self, prompt: QwenPrompt) -> tuple[DynamicCache, int]:
        """A cache already holding the longest reusable prefix of the prompt, and that prefix's length."""
        match = self.prefix_cache.find(prompt.keys) if self.prefix_cache is not None else None
        start = 0 if match is None else min(match.shared, prompt.prompt_tokens - 1)  # read >= 1 token
        for first, end in prompt.image_spans:
            if first < start < end:
                start = first  # an image's features come whole from the vision encoder: never split one
        cache, extend = None, match is not None and start == match.length
        if extend:
            cache = self.prefix_cache.take(match)  # a follow-up extends the earlier conversation in place
        elif match is not None and start >= MIN_SHARED_TO_COPY:
            cache = self.prefix_cache.get(match)  # a branch (regenerate): copied below, the original kept
        self._make_room(prompt.prompt_tokens + ROOM)  # before the copy, the prompt's activations and its cache
        if cache is None:
            return new_cache(self.model.config), 0
        if not extend:
            cache = copy.deepcopy(cache)
        cache.crop(start - cache.get_seq_length())  # transformers 5: minus the tokens to drop
        return cache, start

    def prompt_positions(self, prompt: QwenPrompt) -> tuple[torch.Tensor, int]:
        """(4, 1, L) position ids (text row + M-RoPE t/h/w rows), on the CPU, and the offset decoding continues from."""
        length = prompt.prompt_tokens
        text_row = torch.arange(length).view(1, 1, length)
        if prompt.image_grid_thw is None:
            return text_row.expand(4, 1, length), 0
        rope, deltas = self.model.model.get_rope_index(
            prompt.input_ids, mm_token_type_ids=prompt.mm_token_type_ids, image_grid_thw=prompt.image_grid_thw
        )
        return torch.cat([text_row, rope], dim=0), int(deltas[0, 0])
