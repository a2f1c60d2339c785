"""OpenAI Chat Completions requests (JSON or form-data) → internal `ChatRequest`; pure, no model."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from loupe.errors import InvalidRequest
from loupe.inference import (
    TEXT_PRESET,
    VISION_PRESET,
    ChatRequest,
    ImagePart,
    Message,
    Part,
    ResponseFormat,
    SamplingParams,
    TextPart,
)
from loupe.protocol.image_budget import Budget, apply_budget, read_budget
from loupe.protocol.response_formats import extraction_prompt, form_response_format, parse_response_format
from loupe.settings import Settings

DEFAULT_IMAGE_PROMPT = "Describe this image."
ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 4

# name → (type, lowest, highest); the bounds are inclusive.
NUMBER_FIELDS: dict[str, tuple[type, float, float]] = {
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.0, 1.0),
    "top_k": (int, 0, 1000),
    "presence_penalty": (float, -2.0, 2.0),
    "repetition_penalty": (float, 0.01, 10.0),
    "seed": (int, -(2**63), 2**63 - 1),
}


def parse_json_request(body: Any, settings: Settings) -> ChatRequest:
    """Parse an OpenAI Chat Completions JSON body."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    messages = parse_messages(body.get("messages"), "messages")
    if not messages:
        raise InvalidRequest("`messages` must be a non-empty list.", param="messages")
    if isinstance(body.get("n"), bool) or body.get("n", 1) != 1:  # True == 1 in Python, not in JSON
        raise InvalidRequest("Only `n` = 1 is supported.", param="n")
    response_format = parse_response_format(body.get("response_format"))
    return _build_request(messages, body, response_format, from_form=False, settings=settings)


def parse_form_request(form: Mapping[str, str], images: Sequence[bytes], settings: Settings) -> ChatRequest:
    """Parse the form-data shape: `prompt`, repeated `image` files, `system`, `messages`, sampling fields,
    `response_format` (JSON text) or `schema` (a JSON schema: the answer follows it)."""
    response_format = form_response_format(form)
    history: list[Message] = []
    if form.get("messages"):
        try:
            history = parse_messages(json.loads(form["messages"]), "messages")
        except json.JSONDecodeError:
            raise InvalidRequest("`messages` must be a JSON list of messages.", param="messages") from None
    prompt = form.get("prompt", "")
    if not prompt.strip() and response_format.schema is not None and form.get("schema"):
        prompt = extraction_prompt(response_format)
    elif not prompt.strip() and images:
        prompt = DEFAULT_IMAGE_PROMPT
    parts: list[Part] = [ImagePart(data=data) for data in images]
    if prompt:
        parts.append(TextPart(prompt))
    messages: list[Message] = []
    if form.get("system") and not (history and history[0].role == "system"):
        messages.append(Message("system", (TextPart(form["system"]),)))
    messages.extend(history)
    if parts:
        messages.append(Message("user", tuple(parts)))
    if not messages or messages[-1].role != "user":
        raise InvalidRequest("Send a `prompt`, an `image`, or `messages` ending with a user turn.", param="prompt")
    return _build_request(messages, form, response_format, from_form=True, settings=settings)


def parse_messages(raw: Any, param: str) -> list[Message]:
    """Parse a list of OpenAI messages; content is a string or a list of text/image_url parts."""
    if not isinstance(raw, list):
        raise InvalidRequest(f"`{param}` must be a list of messages.", param=param)
    messages = []
    for i, item in enumerate(raw):
        where = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"`{where}` must be an object.", param=where)
        role = item.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"`{where}.role` must be one of {', '.join(ROLES)}.", param=f"{where}.role")
        parts = _parse_content(item.get("content"), f"{where}.content")
        if role != "user" and any(isinstance(p, ImagePart) for p in parts):
            raise InvalidRequest("Images are accepted only in user messages.", param=f"{where}.content")
        messages.append(Message(role, tuple(parts)))
    return messages


def _parse_content(content: Any, where: str) -> list[Part]:
    """Parse message content: a string, null, or a list of parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list):
        raise InvalidRequest(f"`{where}` must be a string or a list of parts.", param=where)
    parts: list[Part] = []
    for j, part in enumerate(content):
        here = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(TextPart(part["text"]))
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str) or not url:
                raise InvalidRequest(f"`{here}.image_url.url` must be a URL string.", param=here)
            own = read_budget(image_url, f"{here}.image_url.") if isinstance(image_url, dict) else Budget()
            parts.append(ImagePart(url=url, detail=own.detail, min_pixels=own.min_pixels, max_pixels=own.max_pixels))
        else:
            raise InvalidRequest(f"`{here}` must be a text or image_url part.", param=here)
    return parts


def _build_request(
    messages: list[Message],
    fields: Mapping[str, Any],
    response_format: ResponseFormat,
    *,
    from_form: bool,
    settings: Settings,
) -> ChatRequest:
    """Combine messages with sampling fields, presets and limits into a ChatRequest."""
    _refuse_too_many_parts(messages, settings)
    image_count = sum(len(m.images()) for m in messages)
    if image_count > settings.max_images:
        raise InvalidRequest(f"At most {settings.max_images} images per request.", param="messages")
    messages = _with_budgets(messages, read_budget(fields, "", from_form), settings)
    sampling = parse_sampling(fields, image_count > 0, settings, from_form=from_form)
    if response_format.constrained and sampling.stop:
        raise InvalidRequest("`stop` cannot be used with a JSON `response_format`: it would cut it.", param="stop")
    sampling = replace(sampling, response_format=response_format)
    options = fields.get("stream_options")
    if from_form:
        options = {"include_usage": fields.get("include_usage", "false")}
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest("`stream_options` must be an object.", param="stream_options")
        include_usage = _boolean(options.get("include_usage", False), "stream_options.include_usage")
    stream = _boolean(fields.get("stream", False), "stream")
    return ChatRequest(tuple(messages), sampling, stream=stream, include_usage=include_usage)


def _with_budgets(messages: list[Message], request: Budget, settings: Settings) -> list[Message]:
    """Every image part with its pixel bounds resolved: its own budget, else the request's, else the server's."""
    resolved, index = [], 0
    for message in messages:
        parts: list[Part] = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                own = Budget(part.detail, part.min_pixels, part.max_pixels)
                part = apply_budget(part, own, request, settings, f"image[{index}]")
                index += 1
            parts.append(part)
        resolved.append(Message(message.role, tuple(parts)))
    return resolved


def _refuse_too_many_parts(messages: list[Message], settings: Settings) -> None:
    """Refuse more messages or parts than the context holds tokens, before anything is tokenised.

    Every message costs tokens of the chat template (its role's markers) and every sensible part at
    least one, so a request past these counts could never fit; refusing it here costs a count, where
    the chat template and the tokenizer would spend seconds on it. The text's own length is checked
    against the tokenizer's vocabulary (loupe/runtime/prompts.py) before it is tokenised.
    """
    limit = settings.max_context_tokens
    if len(messages) > limit:
        raise InvalidRequest(f"At most {limit} messages per request (MAX_CONTEXT_TOKENS).", param="messages")
    if sum(len(m.parts) for m in messages) > limit:
        raise InvalidRequest(f"At most {limit} content parts per request (MAX_CONTEXT_TOKENS).", param="messages")


def parse_sampling(
    fields: Mapping[str, Any], has_image: bool, settings: Settings, *, from_form: bool = False
) -> SamplingParams:
    """Sampling parameters from request fields, defaulting to the vision or text preset."""
    values: dict[str, Any] = dict(VISION_PRESET if has_image else TEXT_PRESET)
    given = _given(fields, from_form)
    for name, (kind, low, high) in NUMBER_FIELDS.items():
        if given(name):
            values[name] = _number(fields[name], name, kind, low, high, from_form)
    limit = settings.max_new_tokens_limit
    max_tokens = settings.max_new_tokens
    for name in ("max_completion_tokens", "max_tokens"):
        if given(name):
            max_tokens = _number(fields[name], name, int, 1, limit, from_form)
    return SamplingParams(
        max_tokens=max_tokens,
        stop=_stop(fields.get("stop"), from_form),
        ignore_eos=_boolean(fields.get("ignore_eos", False), "ignore_eos"),
        **values,
    )


def _given(fields: Mapping[str, Any], from_form: bool) -> Callable[[str], bool]:
    """Whether a field was given: not null, nor, in a form (an HTML form sends every input), empty."""
    return lambda name: fields.get(name) is not None and not (from_form and fields.get(name) == "")


def _number(raw: Any, name: str, kind: type, low: float, high: float, from_form: bool):
    """Validate one numeric field (form fields arrive as text)."""
    if from_form and isinstance(raw, str):
        try:
            raw = int(raw) if kind is int else float(raw)
        except ValueError:
            raise InvalidRequest(f"`{name}` must be a number.", param=name) from None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise InvalidRequest(f"`{name}` must be a number.", param=name)
    if kind is int and not float(raw).is_integer():
        raise InvalidRequest(f"`{name}` must be a whole number.", param=name)
    if not math.isfinite(raw) or not low <= raw <= high:
        raise InvalidRequest(f"`{name}` must be between {low:g} and {high:g}.", param=name)
    return kind(raw)


def _boolean(raw: Any, name: str) -> bool:
    """A JSON boolean, or its form spelling (true/false/1/0)."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "1", "false", "0", "on", "off", ""):
        return raw.lower() in ("true", "1", "on")
    raise InvalidRequest(f"`{name}` must be true or false.", param=name)


def _stop(raw: Any, from_form: bool) -> tuple[str, ...]:
    """`stop`: a string or a list of up to four non-empty strings."""
    if raw is None or (from_form and raw == ""):
        return ()
    if from_form and isinstance(raw, str) and raw.startswith("["):
        with contextlib.suppress(json.JSONDecodeError):  # not JSON after all: one stop string
            raw = json.loads(raw)
    stops = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise InvalidRequest("`stop` must be a string or a list of up to 4 non-empty strings.", param="stop")
    return tuple(stops)
