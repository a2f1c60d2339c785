"""The chat page at `/`: one template, its scripts and styles served from static/."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from flask import Blueprint, current_app, render_template, url_for

from loupe.protocol.images import ACCEPTED_FORMATS
from loupe.web.services import services

bp = Blueprint("page", __name__)


@bp.get("/")
def index():
    """The chat page."""
    settings = services().settings
    # api_key_required lets the page ask for a key before its first request instead of after a 401.
    return render_template(
        "index.html",
        settings=settings,
        accepted_types=sorted(ACCEPTED_FORMATS.values()),
        api_key_required=bool(settings.api_keys()),
        schemas=[{"title": title, "url": url_for("static", filename=f"schemas/{name}")} for name, title in schemas()],
    )


@cache
def schemas() -> tuple[tuple[str, str], ...]:
    """The shipped extraction schemas (static/schemas/): (file name, title), for the page's "Extract fields"."""
    folder = Path(current_app.static_folder or "static") / "schemas"
    paths = sorted(folder.glob("*.json"))
    return tuple((path.name, json.loads(path.read_text()).get("title", path.stem)) for path in paths)
