"""What several e2e modules do with the chat page: wait for the model, watch requests and answers, open settings."""

from __future__ import annotations

from playwright.sync_api import expect

from loupe.web.security import CONTENT_SECURITY_POLICY


def wait_until_ready(page):
    expect(page.locator("#model-status")).to_have_attribute("data-state", "ok")
    expect(page.locator("#model-status-text")).to_contain_text("Ready")


def watch_answer_states(page):
    """Record every data-state an answer goes through (queued, reading, writing, done...)."""
    page.evaluate("""() => {
        window.__states = [];
        new MutationObserver((records) => {
            for (const r of records) {
                if (r.type === "attributes" && r.target.classList.contains("assistant")) {
                    window.__states.push(r.target.dataset.state);
                }
                for (const node of r.addedNodes || []) {
                    if (node.classList && node.classList.contains("assistant"))
                        window.__states.push(node.dataset.state);
                }
            }
        }).observe(document.getElementById("conversation"),
                   {subtree: true, childList: true, attributes: true, attributeFilter: ["data-state"]});
    }""")


def answer_states(page) -> list[str]:
    states = page.evaluate("window.__states")
    return [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]


def chat_requests(page) -> list[dict]:
    """Collect the JSON bodies the page posts to the chat endpoint."""
    bodies: list[dict] = []
    page.on(
        "request",
        lambda r: (
            bodies.append(r.post_data_json) if r.method == "POST" and r.url.endswith("/v1/chat/completions") else None
        ),
    )
    return bodies


def conversation_keys(page) -> list[str | None]:
    """Collect the X-Loupe-Conversation header of each request the page posts to the chat endpoint."""
    keys: list[str | None] = []
    page.on(
        "request",
        lambda r: (
            keys.append(r.headers.get("x-loupe-conversation"))
            if r.method == "POST" and r.url.endswith("/v1/chat/completions")
            else None
        ),
    )
    return keys


def open_settings(page):
    page.get_by_role("button", name="Settings").click()
    expect(page.get_by_role("dialog", name="Settings")).to_be_visible()


def set_max_tokens(page, value: int):
    open_settings(page)
    page.get_by_label("Max tokens").fill(str(value))
    page.get_by_role("button", name="Done").click()
    expect(page.get_by_role("dialog", name="Settings")).to_be_hidden()


def goto_under_the_servers_csp(page, url: str) -> None:
    """Open the page and check that the server sent its own strict CSP with it: no inline script or style,
    no eval. (Chromium reports every violation as a console error, which fails the test.)"""
    policy = page.goto(url).headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    directives = dict(directive.strip().split(" ", 1) for directive in policy.split(";"))
    assert (directives["script-src"], directives["style-src"]) == ("'self'", "'self'")
