"""Property-based fuzzing of every documented operation with schemathesis, on a real app and the tiny model:
whatever it sends, no 5xx, every error in OpenAI's envelope, every response as the document says."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from app import create_app
from loupe.web.openapi.paths import api_paths, history_paths, page_paths
from loupe.web.services import services

API_KEY = "fuzz-key"
MAX_EXAMPLES = 20  # per operation and mode: the whole module takes about a minute on the tiny model
DOCUMENTED = {**api_paths(), **history_paths(), **page_paths()}
# (path, method, mode): every operation with valid data; with invalid data, those that take any (a body,
# a query or a path parameter; X-Request-ID takes any string, so leaves nothing to break).
CASES = [
    (path, method.upper(), mode)
    for path, item in DOCUMENTED.items()
    for method, op in item.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or "requestBody" in op or op.get("parameters")
]


@pytest.fixture(scope="module")
def fuzzed_app(app, settings, tmp_path_factory):
    """An app with its own history and an API key, sharing the session's loaded engine; generations are
    capped at a few tokens (MAX_NEW_TOKENS_LIMIT), so fuzzed `max_tokens` stays quick."""
    own = settings.replace(
        data_dir=str(tmp_path_factory.mktemp("fuzz-history")), max_new_tokens_limit=8, api_key=API_KEY
    )
    application = create_app(own, engine=services(app).engine)
    yield application
    services(application).history.close()


@pytest.fixture(scope="module")
def fuzzed_schema(fuzzed_app):
    """The document the app serves, loaded by schemathesis, calling the app through WSGI."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzzed_app)
    # The key is sent with every case (below), so the cases leave Authorization alone; and the server, as
    # HTTP servers do, ignores query parameters it does not know, so unknown ones are not "invalid".
    schema.config.generation.update(with_security_parameters=False, allow_extra_parameters=False)
    return schema


# Every check of schemathesis's runs but one: that every schema-valid request is accepted. Some rules
# the document cannot state, so valid-looking requests are rightly refused (400): that an image's
# bytes decode as one, that a form's `messages` string holds JSON, that a `cursor` came from a page.
# And one runs narrowed: that invalid data is refused, except in form bodies, which carry only text:
# a number sent where a string belongs is text there, and valid; and an empty field is an absent one.
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def invalid_data_refused(ctx, response, case):
    """schemathesis's negative_data_rejection, for every body but a form's."""
    if case.media_type in FORM_TYPES:
        return None
    return negative_data_rejection(ctx, response, case)


def error_envelope(ctx, response, case) -> None:
    """Every error, documented status or not, is exactly OpenAI's envelope."""
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body


@pytest.mark.parametrize(("path", "method", "mode"), CASES, ids=[f"{m} {p} {mode.value}" for p, m, mode in CASES])
def test_every_operation_survives_fuzzing(fuzzed_schema, path, method, mode):
    operation = fuzzed_schema[path][method]
    headers = {"Authorization": f"Bearer {API_KEY}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(
            headers=headers,
            additional_checks=[error_envelope, invalid_data_refused],
            excluded_checks=[positive_data_acceptance, negative_data_rejection],
        )

    run()
