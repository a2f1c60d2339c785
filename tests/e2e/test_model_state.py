"""The page follows /health: loading (send disabled, with a message), ready, or error (with the reason).

The app is the real one from `create_app`, served in-process, with an engine whose loader we control.
"""

from __future__ import annotations

import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import expect
from werkzeug.serving import make_server

from app import create_app
from loupe.engine.engine import Engine
from loupe.settings import Settings
from tests.support.fakes import ScriptedBackend, ScriptedPrompt

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a browser, seconds a test


MODEL = "Qwen3-VL-2B-Instruct"  # a real model's name: long enough to test the phone header


@contextmanager
def serve(engine: Engine, **settings: str) -> Iterator[str]:
    """Serve the real app with this engine on a free loopback port, its history in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="loupe-e2e-") as data_dir:
        app = create_app(
            Settings.from_mapping({"MODEL_ID": "/models/qwen3-vl-2b", "DATA_DIR": data_dir, **settings}), engine
        )
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            thread.join(5)


def test_loading_state_disables_sending_until_the_model_is_ready(open_page, screenshot, engines):
    loaded = threading.Event()

    def slow_load():
        loaded.wait(60)
        return ScriptedBackend(name=MODEL)

    with serve(engines.start(slow_load, queue_size=1)) as url:
        opened = open_page(url)
        opened.console.allow(r"/health.*503|status of 503")  # the browser logs each 503 from /health
        page = opened.page
        expect(page.locator("#model-status")).to_have_attribute("data-state", "loading")
        expect(page.locator("#model-status-text")).to_have_text("Loading the model…")
        banner = page.locator("#model-banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("The model is loading")
        page.get_by_label("Message").fill("Is it ready?")
        expect(page.get_by_role("button", name="Send")).to_be_disabled()
        expect(page.get_by_role("button", name="Describe")).to_be_disabled()
        page.get_by_label("Message").press("Enter")
        expect(page.locator(".turn")).to_have_count(0)
        screenshot(page, "desktop-loading")

        loaded.set()
        expect(page.locator("#model-status-text")).to_have_text("Ready · Qwen3-VL-2B-Instruct")
        expect(banner).to_be_hidden()
        expect(page.get_by_role("button", name="Send")).to_be_enabled()
        expect(page.get_by_label("Message")).to_have_value("Is it ready?")


def test_error_state_shows_the_reason(open_page, screenshot, engines):
    def failing_load():
        raise RuntimeError("No model found at /models/qwen3-vl-2b: the directory does not exist.")

    with serve(engines.start(failing_load, queue_size=1)) as url:
        opened = open_page(url, device="phone")
        opened.console.allow(r"/health.*503|status of 503")
        page = opened.page
        expect(page.locator("#model-status")).to_have_attribute("data-state", "error")
        expect(page.locator("#model-status-text")).to_have_text("Model unavailable")
        banner = page.locator("#model-banner")
        expect(banner).to_have_attribute("role", "alert")
        expect(banner).to_have_text(
            "The model could not be loaded: No model found at /models/qwen3-vl-2b: the directory does not exist."
        )
        page.get_by_label("Message").fill("Hello")
        expect(page.get_by_role("button", name="Send")).to_be_disabled()
        screenshot(page, "phone-model-error")


def test_waiting_is_explained_queued_then_reading_then_writing(open_page, screenshot, tmp_path, fits_a_phone, engines):
    """On a CPU the first word can take long: the page says what is happening and the time keeps moving."""
    from PIL import Image

    Image.new("RGB", (300, 200), (70, 130, 180)).save(tmp_path / "sky.png")
    # A short Markdown answer, held back by the gate: until it opens, the page shows the image being read.
    gate = threading.Event()
    backend = ScriptedBackend(
        ["It shows ", "a **yellow** sun", " over a field."],
        gate=gate,
        name=MODEL,
        prompt=ScriptedPrompt(prompt_tokens=120, image_tokens=100),
    )
    with serve(engines.ready(backend, queue_size=2)) as url:
        first = open_page(url).page
        expect(first.locator("#model-status-text")).to_have_text("Ready · Qwen3-VL-2B-Instruct")
        first.set_input_files("#file-input", str(tmp_path / "sky.png"))
        first.get_by_label("Message").fill("What is in the sky?")
        first.get_by_label("Message").press("Enter")
        reading = first.locator(".turn.assistant")
        expect(reading).to_have_attribute("data-state", "reading")
        expect(reading.locator(".progress-text")).to_have_text("Reading the image…")
        expect(first.locator("#announcer")).to_have_text("Reading the image…")
        expect(reading.locator(".elapsed")).to_have_text(re.compile(r"^[1-9]\.\d s$"))  # the clock ticks
        screenshot(first, "desktop-reading")

        # A second person's request waits in the queue behind the first one.
        second = open_page(url, device="phone").page
        expect(second.locator("#model-status-text")).to_have_text("Ready · Qwen3-VL-2B-Instruct")
        second.get_by_label("Message").fill("Hello?")
        second.get_by_role("button", name="Send").click()
        queued = second.locator(".turn.assistant")
        expect(queued).to_have_attribute("data-state", "queued")
        expect(queued.locator(".progress-text")).to_have_text("Queued — waiting for the model…")
        expect(queued.locator(".elapsed")).to_have_text(re.compile(r"^[1-9]\.\d s$"))
        fits_a_phone(second)
        screenshot(second, "phone-queued")

        gate.set()
        expect(reading).to_have_attribute("data-state", "done")
        expect(reading.locator(".answer strong")).to_have_text("yellow")
        expect(reading.locator(".answer")).to_have_text("It shows a yellow sun over a field.")
        expect(reading.locator(".stats")).to_contain_text("100 image tokens")
        expect(queued).to_have_attribute("data-state", "done")
        expect(queued.locator(".stats")).to_contain_text("queued")  # it waited behind the first request
