"""Internal request and result types: what the web layer hands the engine and gets back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from PIL.Image import Image

# The two sampling presets Qwen recommends for Qwen3-VL Instruct.
VISION_PRESET = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5}
TEXT_PRESET = {"temperature": 1.0, "top_p": 1.0, "top_k": 40, "presence_penalty": 2.0}


@dataclass(frozen=True)
class TextPart:
    """A piece of text in a message."""

    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image in a message: bytes or a URL until loaded; then also the normalised RGB image.

    A loaded part keeps the original bytes with their MIME type and size (as displayed: EXIF
    orientation applied), so the history can store exactly what the client sent.
    """

    data: bytes | None = None
    url: str | None = None
    image: Image | None = None
    mime: str | None = None
    width: int | None = None
    height: int | None = None
    # The image budget (loupe/protocol/image_budget.py): the detail asked for, and the pixel bounds
    # handed to the model's image processor (None: the processor's own).
    detail: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None


Part = TextPart | ImagePart


@dataclass(frozen=True)
class Message:
    """One conversation turn."""

    role: str
    parts: tuple[Part, ...]

    def images(self) -> list[ImagePart]:
        """The image parts of this message, in order."""
        return [p for p in self.parts if isinstance(p, ImagePart)]


@dataclass(frozen=True)
class ResponseFormat:
    """What shape the answer must take: `text` (free), `json_object` (any JSON object) or `json_schema`.

    `schema` is the JSON schema as compact JSON text, so a format is hashable and the runtime can keep what
    it compiles from one.
    """

    type: str = "text"
    schema: str | None = None
    name: str | None = None
    strict: bool = False

    @property
    def constrained(self) -> bool:
        """Whether decoding is constrained to JSON."""
        return self.type != "text"

    def to_dict(self) -> dict:
        """The OpenAI `response_format` object this was read from (the schema parsed back)."""
        if self.type != "json_schema":
            return {"type": self.type}
        inner = {"name": self.name, "schema": json.loads(self.schema or "{}"), "strict": self.strict}
        return {"type": "json_schema", "json_schema": inner}


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; temperature 0 means greedy."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    presence_penalty: float
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    response_format: ResponseFormat = ResponseFormat()  # a JSON format constrains which tokens may come next


@dataclass(frozen=True)
class ChatRequest:
    """A parsed chat completion request."""

    messages: tuple[Message, ...]
    sampling: SamplingParams
    stream: bool = False
    include_usage: bool = False

    def image_parts(self) -> list[ImagePart]:
        """Every image of the conversation, in order."""
        return [p for m in self.messages for p in m.images()]

    def image_sizes(self) -> list[tuple[int, int]]:
        """The original (width, height) of every loaded image, in order: what boxes are given in."""
        return [(p.width, p.height) for p in self.image_parts() if p.width is not None and p.height is not None]


@dataclass(frozen=True)
class Token:
    """One generated token: its id, the text it completes (may be empty) and whether it ends the answer."""

    id: int
    text: str
    eos: bool = False
    complete: bool = False  # the answer's grammar is complete with this token's text: nothing may follow
    cached_prompt_tokens: int = 0  # on the first token: prompt tokens reused from the prefix cache


@dataclass(frozen=True)
class Ending:
    """How an engine behind an API (BACKEND=openai) ended an answer, with its counts when it gave them."""

    finish_reason: str  # `stop` or `length`
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0


@dataclass
class Timings:
    """Where the time of one generation went."""

    image_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    queue_ms: float = 0.0
    prompt_ms: float = 0.0
    ttft_ms: float = 0.0
    decode_ms: float = 0.0
    completion_tokens: int = 0

    def to_dict(self) -> dict:
        """The `timings` object of a response."""
        decode_tokens = max(self.completion_tokens - 1, 0)  # the first token comes from the prompt pass
        rate = decode_tokens / (self.decode_ms / 1000) if self.decode_ms > 0 and decode_tokens else 0.0
        return {
            "image_tokens": self.image_tokens,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "queue_ms": round(self.queue_ms, 1),
            "prompt_ms": round(self.prompt_ms, 1),
            "ttft_ms": round(self.ttft_ms, 1),
            "decode_ms": round(self.decode_ms, 1),
            "decode_tokens_per_second": round(rate, 2),
        }


@dataclass(frozen=True)
class Started:
    """The engine took the request off the queue and began reading the prompt."""


@dataclass(frozen=True)
class TextDelta:
    """New answer text."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The generation ended: `stop` (end of answer or a stop string) or `length`."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    timings: Timings = field(default_factory=Timings)


Event = Started | TextDelta | Finished
