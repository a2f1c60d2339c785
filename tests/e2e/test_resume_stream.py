"""The chat page resumes a stream whose connection is cut mid-answer, and shows the whole answer."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from tests.e2e.page_actions import set_max_tokens, wait_until_ready
from tests.support.cutting_proxy import CuttingProxy
from tests.support.live_server import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a browser, and a real gunicorn server

ANSWER_TOKENS = 60
# The response's headers, the `: accepted` comment, the role and a few words: the cut comes mid-answer.
CUT_AFTER_BYTES = 1500
OFFLINE_SECONDS = 1.5


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    live = LiveServer(
        {
            "MODEL_ID": str(tiny_model_dir),
            "MAX_BATCH": "1",
            "PREFIX_CACHE_TOKENS": "0",  # each answer reads its prompt afresh: greedy answers are comparable
        },
        tmp_path_factory.mktemp("e2e-resume") / "server.log",
    )
    live.start("ok")
    yield live
    live.stop()


@pytest.fixture
def proxy(server):
    cutting = CuttingProxy(server.port)
    yield cutting
    cutting.close()


def ask_greedily(page, question):
    """Send `question` in a new chat (temperature 0, past the end-of-answer token) and return the answer."""
    page.get_by_role("button", name="New chat").click()
    page.get_by_label("Message").fill(question)
    page.get_by_label("Message").press("Enter")
    answer = page.locator(".turn.assistant").last
    expect(answer).to_have_attribute("data-state", "done", timeout=120_000)
    return answer


def test_a_stream_cut_mid_answer_is_resumed_and_the_whole_answer_shown(server, proxy, open_page):
    opened = open_page(proxy.url)
    opened.console.allow(r"net::ERR_")  # the browser logs the requests the cut and the outage broke
    page = opened.page
    wait_until_ready(page)
    set_max_tokens(page, ANSWER_TOKENS)
    page.get_by_role("button", name="Settings").click()
    page.get_by_label("Temperature").fill("0")
    page.get_by_role("button", name="Done").click()

    # The tiny random model ends its answers early; the page has no `ignore_eos`, so the test adds it.
    def long_answer(route):
        route.continue_(post_data=json.dumps({**route.request.post_data_json, "ignore_eos": True}))

    page.route("**/v1/chat/completions", long_answer)
    resumes = []
    page.on("request", lambda r: resumes.append(r) if "/v1/chat/completions/streams/" in r.url else None)

    whole = ask_greedily(page, "Tell me about the sea.")
    expect(whole.locator(".stats")).to_contain_text(f"{ANSWER_TOKENS} tokens")
    uninterrupted = whole.locator(".answer").inner_text()
    assert not resumes and proxy.cuts == 0

    proxy.cut_next_stream(CUT_AFTER_BYTES, OFFLINE_SECONDS)
    resumed = ask_greedily(page, "Tell me about the sea.")
    assert proxy.cuts == 1
    assert resumes, "the page did not reconnect"
    last_event_ids = [r.headers.get("last-event-id", "") for r in resumes]
    assert all(re.fullmatch(r"[0-9a-f]{32}:\d+", given) for given in last_event_ids), last_event_ids
    expect(resumed.locator(".stats")).to_contain_text(f"{ANSWER_TOKENS} tokens")
    assert resumed.locator(".answer").inner_text() == uninterrupted

    # The server generated it once, and recorded it once, completed.
    with_history = server.log()
    assert "generation cancelled" not in with_history
    assert re.search(r"route=/v1/chat/completions/streams/<stream_id> status=200", with_history)
