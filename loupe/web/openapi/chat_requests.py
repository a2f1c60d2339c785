"""Schemas of a chat request: JSON (OpenAI's shape) and form-data, with the limits the parser enforces.

A new request field goes in one place here: `sampling_fields` for a field both bodies take (form-data
sends it as text), `json_only_fields` or `form_only_fields` for one that only one of them takes,
`ImageUrl` for a field of an image part, `budget_fields` for one of the image budget, which both
bodies and each image part take, and `response_format_schema` for one of `response_format`.
"""

from __future__ import annotations

from loupe.inference import TEXT_PRESET, VISION_PRESET
from loupe.protocol.chat_requests import DEFAULT_IMAGE_PROMPT, MAX_STOP_SEQUENCES, NUMBER_FIELDS, ROLES
from loupe.protocol.image_budget import DETAILS, SMALLEST
from loupe.protocol.images import ACCEPTED_FORMATS
from loupe.protocol.response_formats import NAME, TYPES
from loupe.settings import Settings
from loupe.web.openapi.shapes import Schema, described, integer, nullable, number, obj, or_null, ref, string

NUMBER_DOCS = {
    "temperature": "0 picks the likeliest token every time (greedy).",
    "top_p": "Nucleus sampling.",
    "top_k": "Sample among the k likeliest tokens; 0 turns it off.",
    "presence_penalty": "Subtracted once from every token already generated (OpenAI's additive penalty).",
    "repetition_penalty": "Multiplicative penalty on tokens already generated (1.0 is off).",
    "seed": "Makes sampling repeatable.",
}
# The parser's booleans (chat_requests._boolean): JSON's, or their form spellings, any case ("" is false).
FLAG_PATTERN = "^(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Oo][Nn]|[Oo][Ff][Ff]|1|0)?$"
IMAGE_TYPES = ", ".join(sorted(ACCEPTED_FORMATS.values()))


def flag(doc: str) -> Schema:
    """A boolean field: true or false, or as text true/1/on, false/0/off or empty."""
    return {"description": doc, "anyOf": [{"type": "boolean"}, string(pattern=FLAG_PATTERN)]}


def budget_fields(settings: Settings, scope: str) -> dict[str, Schema]:
    """The image budget (loupe/protocol/image_budget.py) of `scope`; null or absent says nothing."""
    ceiling = f"lowered to {settings.image_max_edge}² (IMAGE_MAX_EDGE squared) when larger"
    return {
        "detail": {
            "enum": [*DETAILS, None],
            "description": f"The image budget of {scope}: `high` up to IMAGE_MAX_EDGE on the longest edge, `low` at "
            f"most IMAGE_LOW_PIXELS pixels, `auto` what IMAGE_DETAIL says (`{settings.image_detail}`).",
        },
        "min_pixels": or_null(
            integer(
                f"Fewest pixels (width × height) {scope} is seen at; wins over `detail`; {ceiling}.", minimum=SMALLEST
            )
        ),
        "max_pixels": or_null(
            integer(
                f"Most pixels {scope} is seen at; wins over `detail`; {ceiling}; not below `min_pixels`.",
                minimum=SMALLEST,
            )
        ),
    }


def sampling_fields(settings: Settings) -> dict[str, Schema]:
    """Fields both bodies take, with the parser's bounds (loupe/protocol/chat_requests.py); as in OpenAI's
    API, a null number or `stop` is the same as an absent one."""
    fields: dict[str, Schema] = {}
    for name, (kind, low, high) in NUMBER_FIELDS.items():
        preset = (
            ""
            if name not in VISION_PRESET
            else f" Default {VISION_PRESET[name]} with an image, {TEXT_PRESET[name]} without."
        )
        make = integer if kind is int else number
        fields[name] = or_null(make(NUMBER_DOCS.get(name, "") + preset, minimum=low, maximum=high))
    tokens = integer(
        f"Most tokens to generate (default {settings.max_new_tokens}, at most MAX_NEW_TOKENS_LIMIT).",
        minimum=1,
        maximum=settings.max_new_tokens_limit,
    )
    fields["max_tokens"] = or_null(tokens)
    fields["max_completion_tokens"] = or_null(
        described(tokens, "OpenAI's newer name for `max_tokens`; when both are sent, `max_tokens` wins.")
    )
    fields["stop"] = {
        "description": "The answer ends before the first of these, which is not returned.",
        "anyOf": [
            string(minLength=1),
            {"type": "array", "items": string(minLength=1), "maxItems": MAX_STOP_SEQUENCES},
            {"type": "null"},
        ],
    }
    fields["ignore_eos"] = flag("Keep generating past the end-of-answer token (benchmarks use it).")
    fields["stream"] = flag("Answer with Server-Sent Events (text/event-stream) as the text is written.")
    return {**fields, **budget_fields(settings, "every image that does not set its own")}


def json_only_fields() -> dict[str, Schema]:
    """Fields only the JSON body takes."""
    return {
        "messages": {"type": "array", "items": ref("Message"), "minItems": 1},
        "model": {"description": "Any name (not checked): the server has one model, and responses name it."},
        "n": {"const": 1, "description": "Only 1 is supported."},
        "stream_options": nullable(
            obj(
                {"include_usage": flag("With `stream`, a last chunk with `usage`.")},
                closed=False,
            )
        ),
        "response_format": nullable(ref("ResponseFormat")),
    }


def form_only_fields(settings: Settings) -> dict[str, Schema]:
    """Fields only the form-data body takes."""
    return {
        "image": {
            "description": f"An image file ({IMAGE_TYPES}, at most MAX_IMAGE_BYTES); repeat the field for several.",
            "type": "array",
            "items": string(format="binary"),
            "maxItems": settings.max_images,
        },
        "prompt": string(f'The question; "{DEFAULT_IMAGE_PROMPT}" when an image is sent without one.'),
        "system": string("A system prompt."),
        "messages": string(
            "Earlier turns: a JSON list of OpenAI messages (see `Message`).", contentMediaType="application/json"
        ),
        "include_usage": flag("With `stream`, a last chunk with `usage`."),
        "response_format": string(
            "As in JSON (`ResponseFormat`), written as JSON text.",
            contentMediaType="application/json",
            contentSchema=ref("ResponseFormat"),
        ),
        "schema": string(
            "A JSON schema (text or a file; not with `response_format`): the answer is JSON that follows it. "
            "Without a `prompt`, the model is asked for the schema's fields.",
            contentMediaType="application/json",
            contentSchema={"type": "object"},
        ),
    }


def response_format_schema() -> Schema:
    """OpenAI's `response_format` (loupe/protocol/response_formats.py): free text, any JSON object, or a schema's."""
    inner = obj(
        {
            "name": string("Names the format (default `extraction`).", pattern=f"^{NAME.pattern}$"),
            "schema": {
                "type": "object",
                "description": "The JSON schema the answer follows (what llguidance supports; else a 400 naming it).",
            },
            "strict": {"type": ["boolean", "null"], "description": "Accepted; the schema is followed either way."},
        },
        ("schema",),
        closed=False,
    )
    free = [kind for kind in TYPES if kind != "json_schema"]
    return {
        "description": "The answer's shape: with a JSON one the answer always parses (and follows the schema); "
        "not with `stop`, and `max_tokens` no lower than the schema's shortest answer.",
        "oneOf": [
            obj({"type": {"enum": free}}, ("type",), closed=False),
            obj({"type": {"const": "json_schema"}, "json_schema": inner}, ("type", "json_schema"), closed=False),
        ],
    }


def message(role: str, parts: Schema) -> Schema:
    """A message of one role whose content is text, null, or a list of these parts."""
    return obj(
        {"role": {"const": role}, "content": {"anyOf": [{"type": "string"}, parts, {"type": "null"}]}},
        ("role",),
        closed=False,
    )


def chat_request_schemas(settings: Settings) -> dict[str, Schema]:
    """The named schemas of chat requests."""
    text_only = {"type": "array", "items": ref("TextPart")}
    with_images = {"type": "array", "items": {"oneOf": [ref("TextPart"), ref("ImageUrlPart")]}}
    return {
        "ChatCompletionRequest": obj(
            {**json_only_fields(), **sampling_fields(settings)},
            ("messages",),
            closed=False,
            doc=f"OpenAI's Chat Completions request; at most {settings.max_images} images (MAX_IMAGES) in all.",
        ),
        "ChatCompletionForm": obj(
            {**form_only_fields(settings), **sampling_fields(settings)},
            closed=False,
            doc="The form-data shape: a `prompt`, `image` files, a `schema`, or `messages` ending with a user turn. "
            "Values are text (numbers and booleans written out); an empty field is the same as an absent one.",
        ),
        "ResponseFormat": response_format_schema(),
        "Message": {
            "description": "One turn; images only in user turns.",
            "oneOf": [message(role, with_images if role == "user" else text_only) for role in ROLES],
        },
        "TextPart": obj({"type": {"const": "text"}, "text": string()}, ("type", "text"), closed=False),
        "ImageUrlPart": obj(
            {"type": {"const": "image_url"}, "image_url": {"anyOf": [ref("ImageUrl"), string(minLength=1)]}},
            ("type", "image_url"),
            closed=False,
        ),
        "ImageUrl": obj(
            {
                "url": string(
                    f"A base64 data URL (data:image/png;base64,…; {IMAGE_TYPES}), or an http(s) URL when "
                    "ALLOW_REMOTE_IMAGES is on.",
                    minLength=1,
                ),
                **budget_fields(settings, "this image"),
            },
            ("url",),
            closed=False,
        ),
    }
