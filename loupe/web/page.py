"""The chat page at `/`: one template, its scripts and styles served from static/."""

from __future__ import annotations

from flask import Blueprint, render_template

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
    )
