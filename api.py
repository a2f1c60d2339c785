"""HTTP routes of the API: parse, validate, call the engine, format. No model code here."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import BadRequest

from config import Settings
from engine import Engine, Generation
from errors import InvalidRequest, UnsupportedMediaType
from images import load_request_images
from inference import ChatRequest
from observability import observe, request_id
from protocol import parse_form_request, parse_json_request
from remote_images import fetch_image
from responses import CompletionMeta, collect, completion_body, stream_frames

bp = Blueprint("api", __name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class Services:
    """What the routes use, kept in `app.extensions["loupe"]` by the factory."""

    settings: Settings
    engine: Engine


def services() -> Services:
    """The running app's settings and engine."""
    return current_app.extensions["loupe"]


@bp.post("/v1/chat/completions")
def chat_completions():
    """OpenAI Chat Completions, from JSON or form-data, whole or streamed."""
    settings, engine = services().settings, services().engine
    chat = load_request_images(read_chat_request(settings), settings, fetch_image)
    generation = engine.submit(chat)
    meta = CompletionMeta(model=engine.backend.name, id=f"chatcmpl-{request_id()}")
    events = observe(generation)
    if chat.stream:
        return Response(_cancel_on_close(stream_frames(events, meta, chat.include_usage), generation),
                        mimetype="text/event-stream", headers=SSE_HEADERS)
    try:
        text, finished = collect(events)
    finally:
        generation.cancel()
    return jsonify(completion_body(meta, text, finished))


@bp.get("/v1/models")
def models():
    """The OpenAI model list: the one model this server serves."""
    return jsonify({"object": "list", "data": [
        {"id": served_model_name(), "object": "model", "created": 0, "owned_by": "loupe"}]})


@bp.get("/health")
def health():
    """Readiness: 200 once the model is loaded; 503 while loading, after a failed load or when stopping."""
    settings, engine = services().settings, services().engine
    if engine.draining:
        return jsonify({"status": "shutting_down"}), 503
    if engine.status == "ok":
        return jsonify({"status": "ok", "model": engine.backend.name, "device": engine.backend.device,
                        "dtype": engine.backend.dtype, "queue_depth": engine.queue_depth})
    if engine.status == "error":
        return jsonify({"status": "error", "error": engine.error}), 503
    return jsonify({"status": "loading", "model": settings.model_id}), 503


@bp.get("/live")
def live():
    """Liveness: 200 whenever the process can answer, whatever the model is doing."""
    return jsonify({"status": "alive"})


def served_model_name() -> str:
    """The loaded model's name, or the configured id while loading."""
    backend = services().engine.backend
    return backend.name if backend is not None else services().settings.model_id


def read_chat_request(settings: Settings) -> ChatRequest:
    """The request body as a ChatRequest, by content type."""
    mimetype = request.mimetype
    if mimetype == "application/json":
        try:
            body = request.get_json()
        except BadRequest:
            raise InvalidRequest("The body is not valid JSON.") from None
        return parse_json_request(body, settings)
    if mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        files = [f.read(settings.max_image_bytes + 1) for f in request.files.getlist("image")]
        return parse_form_request(request.form, files, settings)
    raise UnsupportedMediaType("Send application/json or multipart/form-data.")


def _cancel_on_close(frames: Iterator[str], generation: Generation) -> Iterator[str]:
    """Stop the generation when the stream ends for any reason, a client disconnect included."""
    try:
        yield from frames
    finally:
        generation.cancel()
