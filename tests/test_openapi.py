"""The OpenAPI document says what the server does: it is valid OpenAPI 3.1, names every route and no other,
and real requests and responses on the tiny model (whole, streamed, form-data, errors, history) match it."""

from __future__ import annotations

import io
import re

import pytest
from openapi_spec_validator import validate

from app import create_app
from loupe.errors import LoupeError
from loupe.web.observability import CONVERSATION_HEADER, REQUEST_ID_HEADER
from loupe.web.openapi.errors import error_classes
from loupe.web.services import services
from tests.support.chat import ask, data_url, png
from tests.support.openapi import Contract

CHAT = "/v1/chat/completions"
NOT_API = {"static"}  # the page's scripts and styles: files, not API


@pytest.fixture(scope="module")
def document(client_module):
    response = client_module.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


@pytest.fixture(scope="module")
def client_module(app):
    return app.test_client()


@pytest.fixture(scope="module")
def contract(document):
    return Contract(document)


@pytest.fixture(scope="module")
def keyed_app(app, settings, tmp_path_factory):
    """An app with API keys (metrics behind them too), sharing the session's engine."""
    own = settings.replace(
        api_key="k1,k2", metrics_require_key=True, data_dir=str(tmp_path_factory.mktemp("keyed-history"))
    )
    application = create_app(own, engine=services(app).engine)
    yield application
    services(application).history.close()


def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: <int:position> → {position}."""
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def test_the_document_is_valid_openapi_3_1(document, keyed_app):
    assert document["openapi"].startswith("3.1")
    validate(document)
    validate(keyed_app.test_client().get("/openapi.json").get_json())


def test_every_route_is_documented_and_every_documented_route_exists(app, document):
    served = {
        (openapi_path(rule.rule), method.lower(), rule.endpoint)
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in NOT_API
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {
        (path, method, op["operationId"]) for path, item in document["paths"].items() for method, op in item.items()
    }
    assert served == documented


def test_limits_come_from_the_settings(document, settings):
    fields = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert fields["max_tokens"]["maximum"] == settings.max_new_tokens_limit
    assert str(settings.max_new_tokens) in fields["max_tokens"]["description"]
    assert (
        document["components"]["schemas"]["ChatCompletionForm"]["properties"]["image"]["maxItems"]
        == settings.max_images
    )


def test_every_error_class_is_listed_under_its_status(document):
    responses = document["components"]["responses"]
    for cls in error_classes():
        assert issubclass(cls, LoupeError)
        listed = [r["description"] for r in responses.values()]
        assert any(cls.__doc__.strip().splitlines()[0] in text for text in listed), cls.__name__


def test_keys_are_documented_where_they_are_checked(document, keyed_app):
    assert "securitySchemes" not in document["components"]
    assert all("security" not in op for item in document["paths"].values() for op in item.values())
    keyed = keyed_app.test_client().get("/openapi.json").get_json()
    assert keyed["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": keyed["components"]["securitySchemes"]["bearer"]["description"],
    }
    secured = {path for path, item in keyed["paths"].items() for op in item.values() if "security" in op}
    assert secured == {p for p in keyed["paths"] if p.startswith(("/v1/", "/inferences"))} | {"/metrics"}
    contract = Contract(keyed)
    client = keyed_app.test_client()
    for path, method in [(CHAT, "POST"), ("/v1/models", "GET"), ("/inferences", "GET"), ("/metrics", "GET")]:
        response = client.open(path, method=method, json=ask(max_tokens=1))
        assert response.status_code == 401
        contract.check_response(path, method, response)
    response = client.get("/v1/models", headers={"Authorization": "Bearer k2"})
    assert response.status_code == 200
    contract.check_response("/v1/models", "GET", response)


def test_a_whole_answer_matches(client, contract):
    body = ask("What is it?", data_url(png()), max_tokens=3, temperature=0, stop=["x"], seed=1)
    contract.check_request(CHAT, "POST", "application/json", body)
    response = client.post(CHAT, json=body)
    assert response.status_code == 200
    contract.check_response(CHAT, "POST", response)


def test_a_stream_matches_frame_by_frame(client, contract):
    body = ask(max_tokens=3, ignore_eos=True, stream=True, stream_options={"include_usage": True})
    contract.check_request(CHAT, "POST", "application/json", body)
    response = client.post(CHAT, json=body)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    contract.check_response(CHAT, "POST", response)


def test_form_data_matches(client, contract):
    fields = {"prompt": "Compare", "max_tokens": 2, "temperature": 0, "stream": False}
    contract.check_request(CHAT, "POST", "multipart/form-data", {**fields, "image": ["<bytes>"]})
    as_text = {name: str(value).lower() for name, value in fields.items()}  # how form-data carries them
    response = client.post(
        CHAT, content_type="multipart/form-data", data={**as_text, "image": [(io.BytesIO(png()), "a.png")]}
    )
    assert response.status_code == 200
    contract.check_response(CHAT, "POST", response)


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        ({"json": ask(temperature=9)}, 400),
        ({"json": {"messages": []}}, 400),
        ({"data": "x", "content_type": "text/plain"}, 415),
        ({"json": ask(image=data_url(b"not an image"))}, 400),
        ({"json": ask(image="data:text/plain;base64,aGk=")}, 415),
    ],
    ids=["bad-field", "no-messages", "text-body", "not-an-image", "not-an-image-type"],
)
def test_errors_match(client, contract, request_, status):
    response = client.post(CHAT, **request_)
    assert response.status_code == status
    contract.check_response(CHAT, "POST", response)


def test_the_other_routes_match(client, contract):
    for path in ["/v1/models", "/health", "/live", "/metrics", "/", "/docs", "/openapi.json"]:
        response = client.get(path)
        assert response.status_code == 200, path
        contract.check_response(path, "GET", response)


def test_the_history_matches(client, contract):
    created = client.post(
        "/inferences",
        content_type="multipart/form-data",
        data={"image": (io.BytesIO(png()), "a.png"), "max_tokens": "2"},
    )
    assert created.status_code == 201
    contract.check_response("/inferences", "POST", created)
    record_id = created.get_json()["id"]
    listing = client.get("/inferences?limit=2&status=completed&since=2020-01-01")
    contract.check_response("/inferences", "GET", listing)
    for path, template in [
        (f"/inferences/{record_id}", "/inferences/{record_id}"),
        (f"/inferences/{record_id}/image", "/inferences/{record_id}/image"),
        (f"/inferences/{record_id}/images/0", "/inferences/{record_id}/images/{position}"),
        (f"/inferences/{record_id}/images/1", "/inferences/{record_id}/images/{position}"),
        ("/inferences/not-a-uuid", "/inferences/{record_id}"),
    ]:
        contract.check_response(template, "GET", client.get(path))
    etag = client.get(f"/inferences/{record_id}/image").headers["ETag"]
    not_modified = client.get(f"/inferences/{record_id}/image", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    contract.check_response("/inferences/{record_id}/image", "GET", not_modified)
    contract.check_response("/inferences", "GET", client.get("/inferences?limit=0"))
    deleted = client.delete(f"/inferences/{record_id}")
    assert deleted.status_code == 200
    contract.check_response("/inferences/{record_id}", "DELETE", deleted)


def test_a_missing_or_malformed_header_fails_the_check(client, contract):
    """Headers are checked as bodies are: a required one must be there, and any one must match its schema."""
    response = client.get("/v1/models")
    del response.headers[REQUEST_ID_HEADER]
    with pytest.raises(AssertionError, match=f"no {REQUEST_ID_HEADER} header"):
        contract.check_response("/v1/models", "GET", response)
    response.headers[REQUEST_ID_HEADER] = "has spaces"
    with pytest.raises(Exception, match="does not match"):
        contract.check_response("/v1/models", "GET", response)
    response.headers[REQUEST_ID_HEADER] = "fine"
    response.headers[CONVERSATION_HEADER] = "x" * 129
    with pytest.raises(Exception, match="does not match"):
        contract.check_response("/v1/models", "GET", response)


def test_an_undocumented_response_field_fails_the_check(client, contract):
    """The check is strict: a field the document does not name is a failure, so the two cannot drift apart."""
    response = client.get("/v1/models")
    body = response.get_json()
    body["data"][0]["extra"] = 1
    with pytest.raises(Exception, match="Additional properties"):
        contract.validate(body, "/components/schemas/ModelList")
