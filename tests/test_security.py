"""API keys, CORS and security headers, through the test client."""

import json
import re
from html.parser import HTMLParser

import pytest

from app import create_app
from loupe.settings import Settings
from loupe.web.security import key_is_valid
from loupe.web.services import services
from tests.support.chat import ask

KEYS = "key-one,key-two"


@pytest.fixture(scope="module")
def keyed(app, tmp_path_factory):
    """A client of an app that wants API keys (from API_KEY and a key file), sharing the loaded engine."""
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("# operators' keys\nfile-key\n\n")
    settings = services(app).settings.replace(api_key=KEYS, api_key_file=str(key_file))
    return create_app(settings, engine=services(app).engine).test_client()


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong"),
        bearer(""),
        {"Authorization": "key-one"},
        {"Authorization": "Basic a2V5LW9uZQ=="},
        bearer("key-one,key-two"),
    ],
)
def test_without_a_valid_key_the_api_is_401_in_the_envelope(keyed, headers):
    for response in (
        keyed.post("/v1/chat/completions", json=ask(max_tokens=1), headers=headers),
        keyed.get("/v1/models", headers=headers),
    ):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        error = response.get_json()["error"]
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
        assert "X-Request-ID" in response.headers


@pytest.mark.parametrize("key", ["key-one", "key-two", "file-key"])
def test_each_configured_key_is_accepted(keyed, key):
    assert keyed.post("/v1/chat/completions", json=ask(max_tokens=1), headers=bearer(key)).status_code == 200
    assert keyed.get("/v1/models", headers={"Authorization": f"bearer  {key} "}).status_code == 200


def test_the_page_probes_and_metrics_stay_open(keyed):
    for path in ("/", "/health", "/live", "/metrics"):
        assert keyed.get(path).status_code != 401, path


def test_metrics_can_require_the_key(app):
    settings = services(app).settings.replace(api_key="k", metrics_require_key=True)
    client = create_app(settings, engine=services(app).engine).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer("k")).status_code != 401


def test_without_keys_the_api_is_open(client):
    assert client.get("/v1/models").status_code == 200


def test_key_comparison():
    keys = (b"alpha", b"beta")
    assert key_is_valid("Bearer beta", keys) and key_is_valid("bearer alpha", keys)
    assert not any(key_is_valid(h, keys) for h in ("Bearer alph", "Bearer alphaa", "alpha", "Bearer ", ""))


@pytest.mark.parametrize(
    "env, words",
    [
        ({"CORS_ORIGINS": "*", "CORS_ALLOW_CREDENTIALS": "true"}, "CORS_ALLOW_CREDENTIALS"),
        ({"API_KEY_FILE": "/nonexistent/keys"}, "API_KEY_FILE"),
    ],
)
def test_bad_security_settings_are_refused(env, words):
    with pytest.raises(ValueError, match=words):
        Settings.from_mapping(env)


def test_the_api_key_is_not_in_the_settings_repr():
    assert "s3cret" not in repr(Settings.from_mapping({"API_KEY": "s3cret"}))


def cors_client(app, **changes):
    settings = services(app).settings.replace(**changes)
    return create_app(settings, engine=services(app).engine).test_client()


PREFLIGHT = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-loupe-conversation",
}


def test_by_default_no_cross_origin_access_is_granted(client):
    preflight = client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert "Access-Control-Allow-Origin" not in preflight.headers
    response = client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_listed_origins_get_preflight_and_cors_headers_even_with_keys(app):
    client = cors_client(app, cors_origins="https://app.example, https://other.example", api_key="k")
    preflight = client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "x-loupe-conversation" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    refused = client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert refused.status_code == 401  # the browser can read the error, as CORS headers are on it
    assert refused.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert {"X-Request-ID", "X-Loupe-Conversation"} <= set(refused.headers["Access-Control-Expose-Headers"].split(", "))
    stranger = client.get("/v1/models", headers={"Origin": "https://evil.example", **bearer("k")})
    assert "Access-Control-Allow-Origin" not in stranger.headers


def test_any_origin_and_credentials(app):
    anyone = cors_client(app, cors_origins="*").get("/v1/models", headers={"Origin": "https://x.example"})
    assert anyone.headers["Access-Control-Allow-Origin"] == "*"
    credentialed = cors_client(app, cors_origins="https://app.example", cors_allow_credentials=True)
    response = credentialed.get("/v1/models", headers={"Origin": "https://app.example"})
    assert response.headers["Access-Control-Allow-Credentials"] == "true"


def test_security_headers_on_the_page_and_the_api(client):
    for path in ("/", "/v1/models", "/nowhere"):
        headers = client.get(path).headers
        assert headers["X-Content-Type-Options"] == "nosniff"
        csp = dict(d.strip().split(" ", 1) for d in headers["Content-Security-Policy"].split(";"))
        assert csp["frame-ancestors"] == "'none'" and csp["script-src"] == "'self'"
        assert "unsafe-inline" not in headers["Content-Security-Policy"]


class PageAudit(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block in a page."""

    def __init__(self):
        super().__init__()
        self.blocked, self.in_script, self.scripts = [], None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if any(name.startswith("on") for name in attrs) or "style" in attrs:
            self.blocked.append((tag, attrs))
        if tag == "style":
            self.blocked.append((tag, attrs))
        if tag == "script":
            self.in_script = attrs
            self.scripts.append(attrs)
            executable = attrs.get("type") in (None, "", "module", "text/javascript")
            if executable and not (attrs.get("src") or "").startswith("/static/"):
                self.blocked.append((tag, attrs))
        linked = tag == "link" and attrs.get("rel") in ("stylesheet", "modulepreload")
        if linked and not attrs["href"].startswith("/static/"):
            self.blocked.append((tag, attrs))


def test_the_page_passes_the_content_security_policy(client):
    audit = PageAudit()
    audit.feed(client.get("/").get_data(as_text=True))
    assert audit.scripts, "the page has scripts to check"
    assert audit.blocked == []


def test_the_page_template_is_told_whether_a_key_is_required(app, keyed):
    from flask import template_rendered

    seen = []

    def record(sender, template, context, **extra):
        seen.append(context["api_key_required"])

    template_rendered.connect(record)
    try:
        keyed.get("/")
        app.test_client().get("/")
    finally:
        template_rendered.disconnect(record)
    assert seen == [True, False]


def page_config(client) -> dict:
    """The JSON configuration the page template renders for the scripts."""
    html = client.get("/").get_data(as_text=True)
    match = re.search(r'<script type="application/json" id="loupe-config">(.*?)</script>', html, re.S)
    assert match, "the page has no configuration block"
    return json.loads(match.group(1))


def test_the_page_config_says_whether_a_key_is_required(keyed, client):
    assert page_config(keyed)["apiKeyRequired"] is True
    assert page_config(client)["apiKeyRequired"] is False
