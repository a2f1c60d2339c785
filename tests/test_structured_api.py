"""`response_format` and the form's `schema` through the HTTP API, on the tiny model: whole, streamed, refused."""

import io
import json

import jsonschema
import pytest

from loupe.inference import ResponseFormat
from loupe.protocol.chat_requests import parse_form_request, parse_json_request
from tests.support.chat import ask, png, sse_chunks
from tests.test_structured import SCHEMAS

ITEMS = SCHEMAS["array_of_enums"]


def json_schema(schema, **extra):
    return {"type": "json_schema", "json_schema": {"name": "things", "schema": schema, **extra}}


def test_a_whole_answer_follows_the_schema(client):
    body = ask("List the things.", max_tokens=60, temperature=0, response_format=json_schema(ITEMS, strict=True))
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.get_json()
    choice = response.get_json()["choices"][0]
    jsonschema.validate(json.loads(choice["message"]["content"]), ITEMS)
    assert choice["finish_reason"] == "stop"


def test_a_streamed_answer_follows_the_schema_and_equals_the_whole_one(client):
    body = ask("List the things.", max_tokens=60, temperature=0, response_format=json_schema(ITEMS))
    whole = client.post("/v1/chat/completions", json=body).get_json()["choices"][0]["message"]["content"]
    chunks = sse_chunks(client.post("/v1/chat/completions", json={**body, "stream": True}))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole
    jsonschema.validate(json.loads(text), ITEMS)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"


def test_json_object_and_text(client):
    answer = client.post(
        "/v1/chat/completions", json=ask(max_tokens=40, temperature=0, response_format={"type": "json_object"})
    ).get_json()
    assert isinstance(json.loads(answer["choices"][0]["message"]["content"]), dict)
    free = client.post("/v1/chat/completions", json=ask(max_tokens=3, response_format={"type": "text"}))
    assert free.status_code == 200


def test_form_data_takes_a_schema_file_and_asks_for_its_fields(client):
    schema = json.dumps(ITEMS).encode()  # the shipped ones write long answers on the tiny model: see test_structured
    fields = {"image": (io.BytesIO(png()), "r.png"), "schema": (io.BytesIO(schema), "things.json")}
    response = client.post(
        "/v1/chat/completions",
        data={**fields, "max_tokens": "60", "temperature": "0"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    answer = json.loads(response.get_json()["choices"][0]["message"]["content"])
    jsonschema.validate(answer, json.loads(schema))


def test_form_data_takes_response_format_as_json_text(client):
    data = {"prompt": "List the things.", "max_tokens": "60", "response_format": json.dumps(json_schema(ITEMS))}
    response = client.post("/v1/chat/completions", data=data, content_type="multipart/form-data")
    jsonschema.validate(json.loads(response.get_json()["choices"][0]["message"]["content"]), ITEMS)


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"response_format": json_schema({"type": "array", "uniqueItems": True})}, "response_format", "uniqueItems"),
        ({"response_format": json_schema({"type": "object", "not": {}})}, "response_format", "not"),
        ({"response_format": {"type": "xml"}}, "response_format", "json_schema"),
        ({"response_format": ""}, "response_format", "json_schema"),  # empty is absent in form-data only
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "object"),
        ({"response_format": json_schema([1])}, "response_format.json_schema.schema", "schema"),
        ({"response_format": json_schema(ITEMS, name="no spaces")}, "response_format.json_schema.name", "letters"),
        ({"response_format": json_schema(ITEMS, name="newline\n")}, "response_format.json_schema.name", "letters"),
        ({"response_format": json_schema(ITEMS, strict="yes")}, "response_format.json_schema.strict", "true"),
        ({"response_format": {"type": "json_object"}, "stop": "}"}, "stop", "stop"),
        ({"response_format": json_schema(ITEMS), "max_tokens": 2}, "max_tokens", "at least"),
    ],
)
def test_a_format_the_server_cannot_follow_is_a_400_that_says_why(client, fields, param, words):
    response = client.post("/v1/chat/completions", json=ask(**fields))
    error = response.get_json()["error"]
    assert response.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param and words in error["message"]


def test_form_refusals(client):
    both = {"prompt": "x", "schema": json.dumps(ITEMS), "response_format": json.dumps({"type": "json_object"})}
    bad = {"prompt": "x", "schema": "{not json"}
    for data, param in ((both, "schema"), (bad, "schema")):
        response = client.post("/v1/chat/completions", data=data, content_type="multipart/form-data")
        assert response.status_code == 400 and response.get_json()["error"]["param"] == param


def test_parsing_keeps_the_format_and_the_schemas_field_order(settings):
    schema = {"type": "object", "properties": {"z": {"type": "string"}, "a": {"type": "string"}}}
    request = parse_json_request(ask(response_format=json_schema(schema, strict=True)), settings)
    fmt = request.sampling.response_format
    assert fmt == ResponseFormat("json_schema", json.dumps(schema, separators=(",", ":")), "things", True)
    assert list(json.loads(fmt.schema)["properties"]) == ["z", "a"]  # the answer's fields come in this order
    assert fmt.to_dict() == json_schema(schema, strict=True)
    form = parse_form_request({"schema": json.dumps({"title": "ID card!", **schema})}, [b"img"], settings)
    assert form.sampling.response_format.name == "ID_card_" and form.sampling.response_format.strict
    assert "follows this schema" in form.messages[-1].parts[-1].text  # no prompt: the fields are asked for
    assert parse_json_request(ask(), settings).sampling.response_format == ResponseFormat()
