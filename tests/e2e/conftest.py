"""Browser fixtures for the end-to-end tests: Debian's Chromium driven by Playwright, pages that fail
the test on any console error, and screenshots kept under artifacts/screenshots/."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.support.live_server import ROOT

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # reported by the `browser` fixture, so the other test folders still run
    sync_playwright = None
else:
    # The tiny model answers in a second or two, but a busy CI machine can be slow: wait up to 20 s.
    expect.set_options(timeout=20_000)

SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("LOUPE_CHROMIUM", "/usr/bin/chromium")
# As root, in a sandbox with no outside network: no sandbox, no GPU, no background calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {
        "viewport": {"width": 390, "height": 844},
        "is_mobile": True,
        "has_touch": True,
        "device_scale_factor": 2,
    },
}


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session (Debian's package; never a downloaded browser)."""
    if sync_playwright is None:
        pytest.fail("Playwright for Python is missing: pip install playwright (never `playwright install`)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@dataclass
class ConsoleWatch:
    """Console errors and uncaught exceptions of a page; a test may allow errors it provokes on purpose."""

    errors: list[str] = field(default_factory=list)
    allowed: list[re.Pattern] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        """Accept console errors matching `pattern` (e.g. the browser's log line of an expected 503)."""
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]


@dataclass
class OpenPage:
    """What `open_page` returns: the page and its console watch."""

    page: object
    console: ConsoleWatch


@pytest.fixture
def open_page(browser) -> Iterator:
    """`open_page(url, device="desktop", **context_options)`: a fresh browser context and page.

    The test fails if the page logs any console error (or throws) that it did not `console.allow`.
    """
    contexts = []
    watches = []

    def open_(url: str | None = None, device: str = "desktop", **options) -> OpenPage:
        context = browser.new_context(**{**VIEWPORTS[device], **options})
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        watch = ConsoleWatch()
        watches.append(watch)

        def on_console(message):
            if message.type == "error":
                location = message.location or {}
                watch.errors.append(f"{message.text} [{location.get('url', '')}]")

        page.on("console", on_console)
        page.on("pageerror", lambda error: watch.errors.append(f"uncaught: {error}"))
        if url is not None:
            page.goto(url)
        return OpenPage(page, watch)

    yield open_
    problems = [error for watch in watches for error in watch.unexpected()]
    for context in contexts:
        context.close()
    assert not problems, "console errors in the page:\n" + "\n".join(problems)


@pytest.fixture(scope="session")
def screenshot():
    """`screenshot(page, name)`: save a full-window PNG to artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), animations="disabled", caret="initial")
        return path

    return take


@pytest.fixture(scope="session")
def fits_a_phone():
    """`fits_a_phone(page, buttons=())`: assert the page does not scroll sideways at phone width and the
    named buttons are big enough to tap (40 px; a finger needs about that)."""
    phone_width = VIEWPORTS["phone"]["viewport"]["width"]

    def check(page, buttons=()) -> None:
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= phone_width, f"the page scrolls sideways on a phone ({width}px wide)"
        for name in buttons:
            box = page.get_by_role("button", name=name).bounding_box()
            assert box["width"] >= 40 and box["height"] >= 40, f"{name} is too small to tap: {box}"

    return check


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Test files: big photos, a small PNG with transparency, a BMP, and a BMP named .png."""
    folder = tmp_path_factory.mktemp("images")
    photo = Image.new("RGB", (1600, 1200), (70, 130, 180))
    draw = ImageDraw.Draw(photo)
    draw.ellipse((500, 300, 1100, 900), fill=(240, 200, 40))
    draw.rectangle((100, 950, 1500, 1100), fill=(40, 120, 60))
    photo.save(folder / "photo.jpg", quality=90)
    # A camera-sized photo: the browser takes a noticeable moment to decode and scale it.
    photo.resize((4000, 3000)).save(folder / "camera.jpg", quality=90)
    icon = Image.new("RGBA", (120, 90), (0, 0, 0, 0))
    ImageDraw.Draw(icon).rectangle((20, 20, 100, 70), fill=(200, 40, 40, 255))
    icon.save(folder / "icon.png")
    Image.new("RGB", (64, 64), (10, 200, 10)).save(folder / "scan.bmp")
    (folder / "disguised.png").write_bytes((folder / "scan.bmp").read_bytes())
    return folder
