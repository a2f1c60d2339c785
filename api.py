"""HTTP routes of the API: parse, validate, call the engine, format. No model code here."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import BadRequest

from config import Settings
from engine import Engine
from disconnects import cancel_on_disconnect
from errors import ClientClosedRequest, GenerationFailed, InvalidRequest, LoupeError, UnsupportedMediaType
from generation import Generation
from history_recorder import Recording
from history_store import HistoryStore
from images import load_request_images
from inference import ChatRequest, Event, Finished
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
    history: HistoryStore | None = None


@dataclass(frozen=True)
class ChatRun:
    """One request on the engine: its events (recorded when history is on) and how to end it."""

    generation: Generation
    events: Iterator[Event]
    recording: Recording | None

    def close(self) -> None:
        """The request is over, however it ended: stop the generation, settle the record."""
        self.generation.cancel()
        if self.recording is not None:
            self.recording.close()


def services() -> Services:
    """The running app's settings, engine and history store (None when HISTORY is off)."""
    return current_app.extensions["loupe"]


@bp.post("/v1/chat/completions")
def chat_completions():
    """OpenAI Chat Completions, from JSON or form-data, whole or streamed."""
    chat = load_chat_request()
    run = start_chat(chat)
    meta = CompletionMeta(model=served_model_name(), id=f"chatcmpl-{request_id()}")
    if chat.stream:
        return Response(_close_at_end(stream_frames(run.events, meta, chat.include_usage), run),
                        mimetype="text/event-stream", headers=SSE_HEADERS)
    text, finished = collect_answer(run)
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


def load_chat_request() -> ChatRequest:
    """The request body as a ChatRequest with every image decoded (and its original bytes kept)."""
    settings = services().settings
    return load_request_images(read_chat_request(settings), settings, fetch_image)


def start_chat(chat: ChatRequest) -> ChatRun:
    """Queue a chat on the engine; with history on, its outcome is recorded, refusals included."""
    history = services().history
    recording = None
    if history is not None:
        recording = Recording(history, chat, request.remote_addr, served_model_name())
    try:
        generation = services().engine.submit(chat)
    except LoupeError as error:
        if recording is not None:
            recording.fail(error)
        raise
    except Exception:
        if recording is not None:
            recording.fail(GenerationFailed("submit failed"))
        raise
    events = recording.observe(generation) if recording is not None else iter(generation)
    return ChatRun(generation, observe(events), recording)


def collect_answer(run: ChatRun) -> tuple[str, Finished]:
    """Wait for a whole answer; if the client hangs up meanwhile, stop the generation instead."""
    def hung_up() -> None:
        run.generation.fail(ClientClosedRequest("The client closed the connection before the answer was ready."))

    try:
        with cancel_on_disconnect(request.environ.get("gunicorn.socket"), hung_up):
            return collect(run.events)
    finally:
        run.close()


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


def _close_at_end(frames: Iterator[str], run: ChatRun) -> Iterator[str]:
    """Close the run when the stream ends for any reason, a client disconnect included."""
    try:
        yield from frames
    finally:
        run.close()
