"""Loupe's requests as an OpenAI-compatible engine reads them, and its stream's chunks read back; pure."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL.Image import Image

from loupe.errors import UpstreamError
from loupe.inference import Ending, ImagePart, Message, SamplingParams, TextPart, Token

FINISH_REASONS = ("stop", "length")  # Loupe's own; an engine's others (`abort`, `content_filter`) read as stop


@dataclass(frozen=True)
class UpstreamPrompt:
    """A conversation ready to send: its messages in OpenAI's form, images as PNG data URLs.

    Its token counts are the engine's to know: they come back with the answer's usage.
    """

    messages: tuple[dict, ...]
    images: int
    prompt_tokens: int = 0
    image_tokens: int = 0


def prompt_of(messages: Sequence[Message]) -> UpstreamPrompt:
    """The conversation in OpenAI's message form; each image as Loupe's intake left it (oriented, RGB, resized)."""
    out, images = [], 0
    for message in messages:
        if not message.images():  # a plain string: what every engine's chat template takes
            out.append(
                {"role": message.role, "content": "".join(p.text for p in message.parts if isinstance(p, TextPart))}
            )
            continue
        content: list[dict] = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                assert part.image is not None, "images are decoded by the intake before a prompt is prepared"
                content.append({"type": "image_url", "image_url": {"url": png_data_url(part.image)}})
                images += 1
            else:
                content.append({"type": "text", "text": part.text})
        out.append({"role": message.role, "content": content})
    return UpstreamPrompt(tuple(out), images)


def png_data_url(image: Image) -> str:
    """A lossless data URL of the image: the engine sees exactly the pixels Loupe's own model would."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # level 1: a fraction of the time of the default, ~same size
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def request_body(prompt: UpstreamPrompt, sampling: SamplingParams, model: str) -> dict:
    """The chat completion request: always streamed (so a hang-up or a deadline can stop it), usage asked for."""
    body: dict = {
        "model": model,
        "messages": list(prompt.messages),
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "presence_penalty": sampling.presence_penalty,
    }
    # Beyond OpenAI's fields: vLLM, SGLang, LMDeploy and llama-server read these; sent only when they matter.
    if sampling.top_k > 0:
        body["top_k"] = sampling.top_k
    if sampling.repetition_penalty != 1.0:
        body["repetition_penalty"] = sampling.repetition_penalty
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.ignore_eos:
        body["ignore_eos"] = True
    if sampling.response_format.constrained:  # OpenAI's field: the engine constrains the answer itself
        body["response_format"] = sampling.response_format.to_dict()
    return body


class ChunkReader:
    """Reads an engine's `chat.completion.chunk` objects into answer pieces and, at the end, an Ending."""

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.chunks = 0

    def read(self, chunk: object) -> Token | None:
        """The text piece a chunk carries (None if it carries none); raises UpstreamError on a malformed one."""
        self.chunks += 1
        if not isinstance(chunk, dict):
            raise UpstreamError(_malformed("a chunk that is not a JSON object"))
        if "error" in chunk:  # vLLM and llama-server report a failure inside a started stream this way
            error = chunk["error"]
            words = error.get("message") if isinstance(error, dict) else error
            raise UpstreamError(f"The engine behind this server failed while answering: {words}")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise UpstreamError(_malformed("`choices` that are not a list of objects"))
        for choice in choices[:1]:  # Loupe asks for one answer
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str) and text:
                return Token(-1, text)
        return None

    def ending(self) -> Ending:
        """How the answer ended; raises UpstreamError if the engine never said."""
        if self.chunks == 0:  # what llama-cpp-python's server sends for a request it fails inside a stream
            raise UpstreamError(
                "The engine behind this server began its answer and closed it without a word; engines do this "
                "when they refuse a request after starting to stream (a prompt past their context, say): "
                "shorten the conversation or retry; its log says why."
            )
        if self.finish_reason is None:
            raise UpstreamError(
                "The engine behind this server ended its answer without a finish_reason (it may have "
                "crashed or restarted); retry, and tell the operator if it persists."
            )
        usage = self.usage or {}
        details = usage.get("prompt_tokens_details") or {}
        return Ending(
            self.finish_reason if self.finish_reason in FINISH_REASONS else "stop",
            _count(usage.get("prompt_tokens")),
            _count(usage.get("completion_tokens")),
            _count(details.get("cached_tokens") if isinstance(details, dict) else None) or 0,
        )


def _count(value: object) -> int | None:
    """A token count as the engine reported it, or None if it reported none."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _malformed(what: str) -> str:
    """Words for an answer that is not OpenAI's stream format."""
    return (
        f"The engine behind this server sent {what}: is BACKEND_URL an OpenAI-compatible API "
        "(its base, ending in /v1)? Tell the operator."
    )
