"""JSON answers on the tiny random-weight model: whatever the weights say, the answer parses and validates."""

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from loupe.errors import InvalidRequest
from loupe.inference import Message, ResponseFormat, SamplingParams, TextPart
from loupe.protocol.response_formats import parse_response_format
from tests.test_model import image_turn, own_backend, photo

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "static" / "schemas"
TEXT = {"type": "string"}
SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "name": TEXT,
            "address": {
                "type": "object",
                "properties": {"city": TEXT, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"],
            },
        },
        "required": ["name", "address"],
    },
    "array_of_enums": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"kind": {"enum": ["fruit", "tool", "toy"]}, "count": {"type": "integer"}},
                    "required": ["kind", "count"],
                    "additionalProperties": False,
                },
                "minItems": 1,
            }
        },
        "required": ["items"],
        "additionalProperties": False,
    },
    "numbers": {
        "type": "object",
        "properties": {
            "price": {"type": "number"},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1},
            "ok": {"type": "boolean"},
            "note": {"type": ["string", "null"]},
        },
        "required": ["price", "ratio", "ok", "note"],
        "additionalProperties": False,
    },
    "top_level_array": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4},
    **{path.stem: json.loads(path.read_text()) for path in sorted(SCHEMAS_DIR.glob("*.json"))},
}
GREEDY = SamplingParams(max_tokens=120, temperature=0.0, top_p=1.0, top_k=0, presence_penalty=0.0)
SAMPLED = SamplingParams(max_tokens=120, temperature=1.0, top_p=0.9, top_k=40, presence_penalty=1.5, seed=7)


def schema_format(schema: dict) -> ResponseFormat:
    return parse_response_format({"type": "json_schema", "json_schema": {"name": "test", "schema": schema}})


def answer(backend, sampling, messages=None):
    prompt = backend.prepare(messages or [Message("user", (TextPart("Fill in the form."),))], sampling.max_tokens)
    made = list(backend.generate(prompt, sampling, lambda: False))
    return "".join(t.text for t in made), made


SHIPPED = ("idcard", "receipt", "invoice")  # long answers on the tiny model: greedy only, to save time


@pytest.mark.parametrize(
    ("name", "sampling"),
    [(name, GREEDY) for name in SCHEMAS] + [(name, SAMPLED) for name in SCHEMAS if name not in SHIPPED],
    ids=[f"greedy-{name}" for name in SCHEMAS] + [f"sampled-{name}" for name in SCHEMAS if name not in SHIPPED],
)
def test_every_answer_parses_and_validates_within_max_tokens(backend, name, sampling):
    schema = SCHEMAS[name]
    fmt = schema_format(schema)
    # The tiny model's tokens are mostly single bytes: the shipped schemas' shortest answers run long.
    sampling = replace(sampling, response_format=fmt, max_tokens=backend.grammars.compile(fmt).shortest + 40)
    backend.validate(sampling)
    text, made = answer(backend, sampling)
    jsonschema.validate(json.loads(text), schema)
    assert made[-1].complete and len(made) <= sampling.max_tokens  # ended by its grammar, not cut off


@pytest.mark.parametrize("spare", [0, 6])
def test_a_short_budget_still_ends_complete_and_valid(backend, spare):
    # Random weights write a number's digits or a string forever: the planned ending closes them in time.
    schema = SCHEMAS["numbers"]
    fmt = schema_format(schema)
    sampling = replace(GREEDY, max_tokens=backend.grammars.compile(fmt).shortest + spare, response_format=fmt)
    max_tokens = sampling.max_tokens
    text, made = answer(backend, sampling, [image_turn(photo())])
    jsonschema.validate(json.loads(text), schema)
    assert made[-1].complete and len(made) <= max_tokens


def test_a_budget_below_the_shortest_answer_is_refused_and_would_be_cut_off(backend):
    fmt = schema_format(SCHEMAS["nested"])
    shortest = backend.grammars.compile(fmt).shortest
    assert shortest is not None and shortest > 3
    backend.validate(replace(GREEDY, max_tokens=shortest, response_format=fmt))
    with pytest.raises(InvalidRequest, match=f"at least {shortest}") as refused:
        backend.validate(replace(GREEDY, max_tokens=shortest - 1, response_format=fmt))
    assert refused.value.param == "max_tokens"
    text, made = answer(backend, replace(GREEDY, max_tokens=3, response_format=fmt))  # what it would get
    assert len(made) == 3 and not made[-1].complete and not made[-1].eos
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_json_object_is_an_object_even_with_ignore_eos(backend):
    sampling = replace(GREEDY, ignore_eos=True, response_format=ResponseFormat("json_object"))
    text, made = answer(backend, sampling)
    assert isinstance(json.loads(text), dict) and (made[-1].complete or made[-1].eos)


def test_a_constrained_row_decodes_beside_free_rows_as_it_does_alone(backend, settings):
    own = own_backend(backend, settings, prefix_cache_tokens=0)
    constrained = replace(GREEDY, max_tokens=40, response_format=schema_format(SCHEMAS["array_of_enums"]))
    free = replace(GREEDY, max_tokens=40, ignore_eos=True)
    conversations = [
        [Message("user", (TextPart("A free question about nothing at all"),))],
        [image_turn(photo(80, 64, seed=3), text="List the things.")],
        [Message("user", (TextPart("Another free one"),))],
    ]
    samplings = [free, constrained, free]
    alone = [answer(own, s, c)[1] for c, s in zip(conversations, samplings, strict=True)]
    made: dict[int, list] = {0: [], 1: [], 2: []}
    pairs = enumerate(zip(conversations, samplings, strict=True))
    sequences = {i: own.start(own.prepare(c, 40), s) for i, (c, s) in pairs}
    while sequences:
        for i, sequence in list(sequences.items()):
            token = own.sample(sequence)
            made[i].append(token)
            if token.eos or token.complete or len(made[i]) == 40:
                own.finish(sequences.pop(i))
        if sequences:
            own.advance()
    assert [[t.id for t in made[i]] for i in range(3)] == [[t.id for t in a] for a in alone]
    jsonschema.validate(json.loads("".join(t.text for t in made[1])), SCHEMAS["array_of_enums"])
    assert made[1][-1].complete and not made[0][-1].complete


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "array", "items": TEXT, "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, '"if", "then"'),
        ({"not": TEXT}, "not"),
        ({"type": "strng"}, "strng"),
        ({"type": "string", "pattern": "(?<=a)b"}, "look-around"),
        ({"$ref": "https://example.com/schema.json"}, "https://example.com/schema.json"),
    ],
)
def test_a_schema_the_grammar_cannot_follow_is_refused_naming_why(backend, schema, named):
    with pytest.raises(InvalidRequest) as refused:
        backend.validate(replace(GREEDY, response_format=schema_format(schema)))
    assert named in refused.value.message and refused.value.param == "response_format"


def test_a_compiled_schema_is_kept_for_the_next_request(backend):
    fmt = schema_format(SCHEMAS["nested"])
    assert backend.grammars.compile(fmt) is backend.grammars.compile(schema_format(SCHEMAS["nested"]))


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_schemas_compile(backend, name):
    assert backend.grammars.compile(schema_format(SCHEMAS[name])).shortest
