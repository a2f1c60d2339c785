"""The API's contract: the OpenAPI document at /openapi.json and a browsable page of it at /docs."""

from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify, render_template, request

from loupe.web.openapi.document import build_document, document_for_request
from loupe.web.services import services

bp = Blueprint("docs", __name__)
_EXTENSION = "loupe_openapi"


def init_docs(app: Flask) -> None:
    """Serve the document, built once from the app's settings, and its page."""
    app.extensions[_EXTENSION] = build_document(services(app).settings)
    app.register_blueprint(bp)


@bp.get("/openapi.json")
def openapi_json():
    """The OpenAPI 3.1 document of this server."""
    return jsonify(document_for_request(current_app.extensions[_EXTENSION], request.script_root))


@bp.get("/docs")
def docs_page():
    """Swagger UI (vendored in static/vendor/swagger-ui/) showing /openapi.json."""
    return render_template("docs.html")
