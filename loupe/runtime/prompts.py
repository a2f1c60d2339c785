"""Qwen3-VL's model inputs, built as transformers' Qwen3VLProcessor builds them, without torchvision.

The processor needs torchvision, which has no CPU build here. The same inputs come from the model's
chat template and the PIL image processor: each image's `<|image_pad|>` repeated
`grid.prod() // merge_size²` times, `pixel_values`, `image_grid_thw` and `mm_token_type_ids` (without
which M-RoPE silently falls back to text positions). tests/test_model.py checks them against the
processor's own.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from loupe.errors import InvalidRequest
from loupe.inference import ImagePart, Message, TextPart

IMAGE_PAD = "<|image_pad|>"
# A long text is checked by tokenising this many characters per token of room (a fraction of a second for
# 8,192 tokens): text of fewer characters per token than this, as most is, is then refused.
SLICE_CHARS_PER_TOKEN = 6
_CLEAN_CUT = re.compile(r"[^\s] ")  # Python's \s holds every character Qwen's pattern's \s does, and more


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


class PromptBuilder:
    """Turns a conversation into a QwenPrompt with the model's tokenizer and image processor."""

    def __init__(self, tokenizer, image_processor, image_token_id: int, max_context: int):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = image_token_id
        self.max_context = max_context
        # Chat-structure and vision tokens: text holding them would break the prompt (an image pad
        # without pixels). Answers never contain them (they are skipped when decoding), so anything
        # the server said can be sent back as history.
        self._specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
        self.max_token_bytes = longest_token_bytes(tokenizer)

    def refuse_long_text(self, messages: Sequence[Message], max_tokens: int) -> None:
        """Refuse a prompt whose text alone cannot fit the context, before the whole of it is tokenised.

        Tokenising is the costly step for a huge body (tens of seconds for megabytes of text), so this
        comes first, in two steps that never refuse a prompt that fits. First by size alone: the
        tokenizer reads the text after NFC normalisation, and each token it makes stands for at most
        `max_token_bytes` bytes of that text (its longest vocabulary entry), so the text is at least
        bytes ÷ max_token_bytes tokens. Counting characters instead would not do: a token may hold one
        byte of a four-byte character, or a dozen characters. Then, as a long vocabulary entry makes
        that bound loose, by tokenising a slice of each long text (`_slice_tokens`).
        """
        texts = [part.text for message in messages for part in message.parts if isinstance(part, TextPart)]
        room = self.max_context - max_tokens
        size = sum(len(unicodedata.normalize("NFC", text).encode()) for text in texts)
        least = -(-size // self.max_token_bytes)
        if least <= room:
            budget = room * SLICE_CHARS_PER_TOKEN
            least = sum(_slice_tokens(self.tokenizer, text, budget) for text in texts if len(text) > budget)
        if least > room:
            raise InvalidRequest(
                f"The messages' text is {size:,} bytes, at least {least:,} tokens; with max_tokens {max_tokens} "
                f"it exceeds the context limit of {self.max_context}. Shorten the conversation.",
                param="messages",
            )

    def build(self, messages: Sequence[Message], max_tokens: int) -> QwenPrompt:
        """Chat template + PIL image processor + placeholder expansion: the processor's inputs."""
        self.refuse_long_text(messages, max_tokens)
        conversation, images = self._conversation(messages)
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        pixel_values = grid = None
        if images:
            pixel_values, grid = self._pixels(images)
            merge = self.image_processor.merge_size**2
            pieces = text.split(IMAGE_PAD)
            expanded = [pieces[0]]
            for thw, piece in zip(grid, pieces[1:], strict=True):
                expanded += [IMAGE_PAD * int(thw.prod() // merge), piece]
            text = "".join(expanded)
        input_ids = torch.tensor([self.tokenizer(text)["input_ids"]], dtype=torch.long)
        if input_ids.shape[1] + max_tokens > self.max_context:
            raise InvalidRequest(
                f"The prompt is {input_ids.shape[1]} tokens; with max_tokens {max_tokens} it exceeds the "
                f"context limit of {self.max_context}. Shorten the conversation or send fewer images.",
                param="messages",
            )
        token_types = (input_ids == self.image_token_id).to(torch.int32)
        pil_images = [part.image for part in images]
        keys, spans = _content_keys(input_ids, token_types, pil_images, grid, self.image_processor.merge_size)
        return QwenPrompt(input_ids, token_types, pixel_values, grid, keys, spans)

    def _pixels(self, images: list[ImagePart]) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values and image_grid_thw of the images, each resized within its own budget.

        One processor call per image, as each may have its own pixel bounds: the processor handles
        images one by one anyway, so the tensors are those of one call for all of them.
        """
        default = self.image_processor.size
        values, grids = [], []
        for part in images:
            shortest, longest = pixel_bounds(part, default["shortest_edge"], default["longest_edge"])
            size = {"shortest_edge": shortest, "longest_edge": longest}
            processed = self.image_processor(images=[part.image], size=size, return_tensors="pt")
            values.append(processed["pixel_values"])
            grids.append(processed["image_grid_thw"])
        return torch.cat(values), torch.cat(grids)

    def _conversation(self, messages: Sequence[Message]) -> tuple[list[dict], list[ImagePart]]:
        """Messages in the chat template's format, and their image parts in order."""
        conversation: list[dict] = []
        images: list[ImagePart] = []
        for message in messages:
            content = []
            for part in message.parts:
                if isinstance(part, ImagePart):
                    content.append({"type": "image"})
                    images.append(part)
                else:
                    if any(special in part.text for special in self._specials):
                        raise InvalidRequest(
                            "Message text may not contain the model's special tokens.", param="messages"
                        )
                    content.append({"type": "text", "text": part.text})
            conversation.append({"role": message.role, "content": content})
        return conversation, images


def pixel_bounds(part: ImagePart, default_min: int, default_max: int) -> tuple[int, int]:
    """The (min, max) pixels the processor resizes an image within: its budget, else the processor's own.

    Below a `max_pixels` the processor's minimum becomes half of it: it scales a small image up with
    its sides rounded up to the 32-pixel grid, which from a minimum equal to the maximum overshoots it.
    """
    longest = part.max_pixels or default_max
    if part.min_pixels is not None:
        return min(part.min_pixels, longest), longest
    return (default_min, longest) if part.max_pixels is None else (min(default_min, longest // 2), longest)


def _slice_tokens(tokenizer, text: str, budget: int) -> int:
    """The tokens of a slice of `text` within its first `budget` characters: never more than the whole text makes.

    The slice runs between two spaces that each follow a character other than whitespace. Qwen's
    pre-tokenizer (its split pattern, applied after NFC normalisation) never lets a piece run across
    such a space: a space starts a piece or ends a run of whitespace, and here none is running. So the
    slice's pieces are pieces of the whole prompt too, and their tokens are among the prompt's.
    """
    where = clean_slice(text, budget)
    if where is None:
        return 0  # no such slice: nothing is claimed
    return len(tokenizer(text[where[0] : where[1]], add_special_tokens=False)["input_ids"])


def clean_slice(text: str, budget: int) -> tuple[int, int] | None:
    """The widest [start, end) within text[:budget] whose ends are spaces that follow a character other than
    whitespace; None if there are not two such spaces."""
    cuts = [match.start() + 1 for match in _CLEAN_CUT.finditer(text, 0, budget)]
    return (cuts[0], cuts[-1]) if len(cuts) >= 2 else None


def longest_token_bytes(tokenizer) -> int:
    """The most bytes of UTF-8 text one token of `tokenizer` can stand for (an upper bound).

    A vocabulary entry's own UTF-8 encoding is never shorter than the text it matches: byte-level BPE
    writes each byte as one character of one or two bytes (`Ġ` for a space), SentencePiece writes a
    space as `▁` (three bytes); added tokens match their content exactly.
    """
    vocabulary = max((len(entry.encode()) for entry in tokenizer.get_vocab()), default=1)
    added = max((len(t.content.encode()) for t in tokenizer.added_tokens_decoder.values()), default=1)
    return max(vocabulary, added, 1)


def _content_keys(
    input_ids: torch.Tensor, token_types: torch.Tensor, images: list, grid: torch.Tensor | None, merge_size: int
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Per-position prefix-cache keys (image tokens keyed by their pixels) and each image's token span.

    The digest is of the image the processor was given, not of its pixel_values (a function of it): an
    eighth of the bytes (RGB bytes against float32 patches), 20-40 ms less before a first token.
    """
    keys = input_ids[0].tolist()
    if grid is None:
        return tuple(keys), ()
    starts = [i for i, t in enumerate(token_types[0].tolist()) if t and (i == 0 or not token_types[0, i - 1])]
    spans = []
    for start, thw, image in zip(starts, grid, images, strict=True):
        # The grid too: one image seen at two budgets is two different inputs (a follow-up may change it).
        digest = hashlib.blake2b(f"{image.mode} {image.size} {thw.tolist()}".encode(), digest_size=7)
        digest.update(image.tobytes())
        base = int.from_bytes(digest.digest(), "big") << 16
        count = int(thw.prod()) // merge_size**2
        keys[start : start + count] = [-(base + k) for k in range(count)]  # negative: never a token id
        spans.append((start, start + count))
    return tuple(keys), tuple(spans)
