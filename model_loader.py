"""Qwen3-VL on torch: the process-wide model singleton, prompt building and the token loop.

The only module that imports torch and transformers. Interface: `load_backend(settings)` gives a
backend whose `prepare` turns messages into model inputs and whose `generate` yields tokens.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, DynamicCache, GenerationConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from config import Settings
from generation import Token
from errors import InvalidRequest
from inference import ImagePart, Message, SamplingParams
from model_attention import use_native_attention
from model_batch import DecodeBatch
from model_cache import ROOM, fit_cache, new_cache
from model_decode_step import decode_step
from model_kernels import use_linear_kernel
from model_memory import map_large_allocations, return_free_memory
from model_sampling import IncrementalDecoder, Sampler
from model_weights import load_advice, load_model, local_directory
from prefix_cache import PrefixCache

log = logging.getLogger(__name__)

IMAGE_PAD = "<|image_pad|>"
MIN_SHARED_TO_COPY = 32  # a shorter shared prefix (a system prompt, say) is cheaper to recompute than copy
_LOCK = threading.Lock()
_BACKENDS: dict[tuple[str, str, str, str], QwenBackend] = {}


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to do about it."""


@dataclass(frozen=True)
class QwenPrompt:
    """Model inputs for one conversation, exactly as transformers' Qwen3VLProcessor would give them."""

    input_ids: torch.Tensor  # (1, L); each image's pad token repeated grid.prod() // merge**2 times
    mm_token_type_ids: torch.Tensor  # (1, L); 1 on image tokens: without it M-RoPE silently goes text-only
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    # Per position: the token id, or for image tokens a digest of the image's pixels, so that two
    # prompts share a prefix only if they share its images too (all image pads have the same id).
    keys: tuple[int, ...] = ()
    image_spans: tuple[tuple[int, int], ...] = ()  # token [start, end) of each image

    @property
    def prompt_tokens(self) -> int:
        return self.input_ids.shape[1]

    @property
    def image_tokens(self) -> int:
        return int(self.mm_token_type_ids.sum())


@dataclass(eq=False)  # identity, not value: a sequence is a row of the decode batch
class QwenSequence:
    """One generation in progress: its prompt, sampling state and what the model has read so far."""

    prompt: QwenPrompt
    sampling: SamplingParams
    sampler: Sampler
    decoder: IncrementalDecoder
    delta: int  # M-RoPE: decoding positions run this far from the token count
    fed: list[int]  # prefix-cache keys of everything in the KV cache
    logits: torch.Tensor
    cached_prompt_tokens: int
    pending: int | None = None
    intact: bool = True


def load_backend(settings: Settings) -> QwenBackend:
    """The process's one backend for these settings, loaded on first call."""
    key = (settings.model_id, settings.dtype, settings.device, settings.linear_kernel)
    with _LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = _load(settings)
        return _BACKENDS[key]


def _load(settings: Settings) -> QwenBackend:
    """Load tokenizer, image processor and weights (straight into their final dtype, one copy)."""
    map_large_allocations()  # before the weights: the load's own transient blocks go back too
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    source = settings.model_id
    try:
        directory = local_directory(source)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(directory)
        model = load_model(directory, getattr(torch, settings.dtype))
        generation_config = GenerationConfig.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(load_advice(source, exc)) from exc
    model.to(settings.device).eval()
    moved = use_linear_kernel(model, settings.linear_kernel, settings.kernel_cache_dir)
    native = settings.linear_kernel == "native" and use_native_attention(model, settings.kernel_cache_dir)
    log.info("model %s loaded in %s; linear layers: %s; one-token attention: %s", source, settings.dtype,
             ", ".join(f"{count} {kernel}" for kernel, count in moved.items()) or "torch's default kernel",
             "native" if native else "sdpa")
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"The tokenizer of {source!r} has no chat template.")
    eos = generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    name = Path(source).name if Path(source).is_dir() else source
    return QwenBackend(model, tokenizer, image_processor, eos_ids, name, settings)


class QwenBackend:
    """Qwen3-VL behind the engine's Backend interface."""

    def __init__(self, model, tokenizer, image_processor, eos_ids: set[int], name: str, settings: Settings):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.eos_ids = eos_ids
        self.name = name
        self.device = settings.device
        self.dtype = settings.dtype
        self.max_context = settings.max_context_tokens
        self.image_token_id = model.config.image_token_id
        self.prefix_cache = PrefixCache(settings.prefix_cache_tokens) if settings.prefix_cache_tokens else None
        self.batch = DecodeBatch(model.config)  # used by the engine's thread only
        self.decode_step = decode_step(model)
        # Chat-structure and vision tokens: text holding them would break the prompt (an image pad
        # without pixels). Answers never contain them (they are skipped when decoding), so anything
        # the server said can be sent back as history.
        self._specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]

    @property
    def cached_tokens(self) -> int:
        """Tokens of earlier conversations kept for follow-up questions (0 without a prefix cache)."""
        return self.prefix_cache.tokens if self.prefix_cache is not None else 0

    def prepare(self, messages: Sequence[Message], max_tokens: int) -> QwenPrompt:
        """Chat template + PIL image processor + placeholder expansion: the processor's inputs."""
        conversation, images = self._conversation(messages)
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        pixel_values = grid = None
        if images:
            processed = self.image_processor(images=images, return_tensors="pt")
            pixel_values, grid = processed["pixel_values"], processed["image_grid_thw"]
            merge = self.image_processor.merge_size ** 2
            pieces = text.split(IMAGE_PAD)
            expanded = [pieces[0]]
            for thw, piece in zip(grid, pieces[1:]):
                expanded += [IMAGE_PAD * int(thw.prod() // merge), piece]
            text = "".join(expanded)
        input_ids = torch.tensor([self.tokenizer(text)["input_ids"]], dtype=torch.long)
        if input_ids.shape[1] + max_tokens > self.max_context:
            raise InvalidRequest(
                f"The prompt is {input_ids.shape[1]} tokens; with max_tokens {max_tokens} it exceeds the "
                f"context limit of {self.max_context}. Shorten the conversation or send fewer images.",
                param="messages")
        token_types = (input_ids == self.image_token_id).to(torch.int32)
        keys, spans = _content_keys(input_ids, token_types, pixel_values, grid, self.image_processor.merge_size)
        return QwenPrompt(input_ids, token_types, pixel_values, grid, keys, spans)

    def _conversation(self, messages: Sequence[Message]) -> tuple[list[dict], list]:
        """Messages in the chat template's format, and their images in order."""
        conversation, images = [], []
        for message in messages:
            content = []
            for part in message.parts:
                if isinstance(part, ImagePart):
                    content.append({"type": "image"})
                    images.append(part.image)
                else:
                    if any(special in part.text for special in self._specials):
                        raise InvalidRequest("Message text may not contain the model's special tokens.",
                                             param="messages")
                    content.append({"type": "text", "text": part.text})
            conversation.append({"role": message.role, "content": content})
        return conversation, images

    @torch.inference_mode()
    def start(self, prompt: QwenPrompt, sampling: SamplingParams) -> QwenSequence:
        """Read a prompt (reusing a cached prefix) and add it to the decode batch."""
        cache, cached, logits, delta = self._prefill(prompt)
        sequence = QwenSequence(prompt, sampling, Sampler(sampling), IncrementalDecoder(self.tokenizer),
                                delta, list(prompt.keys), logits, cached)
        self.batch.add(sequence, cache)
        return_free_memory()  # the prefill's activations and the batch's old layers
        return sequence

    def sample(self, sequence: QwenSequence) -> Token:
        """Pick the sequence's next token from its latest logits; `advance` feeds it to the model."""
        token = sequence.sampler.pick(sequence.logits)
        sequence.pending = token
        eos = token in self.eos_ids and not sequence.sampling.ignore_eos
        cached, sequence.cached_prompt_tokens = sequence.cached_prompt_tokens, 0
        return Token(token, "" if eos else sequence.decoder.add(token), eos, cached)

    @torch.inference_mode()
    def advance(self) -> None:
        """One forward pass feeding every sequence in the batch its pending token."""
        rows: list[QwenSequence] = self.batch.rows
        positions = [[len(s.fed)] + [len(s.fed) + s.delta] * 3 for s in rows]
        for sequence in rows:
            sequence.intact = False  # a failure inside the pass leaves every cache half-written
        logits = self.batch.forward(self.decode_step, [s.pending for s in rows], positions)
        for index, sequence in enumerate(rows):
            sequence.fed.append(sequence.pending)
            sequence.logits, sequence.pending, sequence.intact = logits[index:index + 1], None, True
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
        return_free_memory()

    def generate(self, prompt: QwenPrompt, sampling: SamplingParams, cancelled: Callable[[], bool]) -> Iterator[Token]:
        """One sequence on its own: tokens until an end, the limit, or `cancelled()`."""
        if cancelled():
            return
        sequence = self.start(prompt, sampling)
        try:
            for step in range(sampling.max_tokens):
                token = self.sample(sequence)
                yield token
                if token.eos or step + 1 == sampling.max_tokens or cancelled():
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
            pixel_values = torch.cat([prompt.pixel_values[offsets[i]:offsets[i + 1]] for i in new_images])
            grid = prompt.image_grid_thw[new_images]
        logits = self.model(
            input_ids=prompt.input_ids[:, start:], pixel_values=pixel_values, image_grid_thw=grid,
            mm_token_type_ids=prompt.mm_token_type_ids[:, start:], position_ids=positions[:, :, start:],
            cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
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
        """(4, 1, L) position ids (text row + M-RoPE t/h/w rows) and the offset decoding continues from."""
        length = prompt.prompt_tokens
        text_row = torch.arange(length).view(1, 1, length)
        if prompt.image_grid_thw is None:
            return text_row.expand(4, 1, length), 0
        rope, deltas = self.model.model.get_rope_index(
            prompt.input_ids, mm_token_type_ids=prompt.mm_token_type_ids, image_grid_thw=prompt.image_grid_thw)
        return torch.cat([text_row, rope], dim=0), int(deltas[0, 0])


def _content_keys(input_ids: torch.Tensor, token_types: torch.Tensor, pixel_values: torch.Tensor | None,
                  grid: torch.Tensor | None, merge_size: int) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Per-position prefix-cache keys (image tokens keyed by their pixels) and each image's token span."""
    keys = input_ids[0].tolist()
    if grid is None:
        return tuple(keys), ()
    starts = [i for i, t in enumerate(token_types[0].tolist()) if t and (i == 0 or not token_types[0, i - 1])]
    spans, row = [], 0
    for start, thw in zip(starts, grid):
        rows = int(thw.prod())
        digest = hashlib.blake2b(pixel_values[row:row + rows].numpy().tobytes(), digest_size=7).digest()
        base = int.from_bytes(digest, "big") << 16
        count = rows // merge_size**2
        keys[start:start + count] = [-(base + k) for k in range(count)]  # negative: never a token id
        spans.append((start, start + count))
        row += rows
    return tuple(keys), tuple(spans)
