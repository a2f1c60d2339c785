"""The API's routes: chat completions, the model list and the probes. Parse, call the engine, format."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from loupe.protocol.responses import CompletionMeta, completion_body
from loupe.web.chat_flow import collect_answer, load_chat_request, served_model_name, start_chat
from loupe.web.observability import request_id
from loupe.web.services import services
from loupe.web.streams import cancel_stream, resumed_response, stream_response

bp = Blueprint("api", __name__)


@bp.post("/v1/chat/completions")
def chat_completions():
    """OpenAI Chat Completions, from JSON or form-data, whole or streamed."""
    chat = load_chat_request()
    run = start_chat(chat)
    meta = CompletionMeta(model=served_model_name(), id=f"chatcmpl-{request_id()}")
    if chat.stream:
        return stream_response(chat, run, meta)
    text, finished = collect_answer(run)
    return jsonify(completion_body(meta, text, finished, chat.image_sizes()))


@bp.get("/v1/chat/completions/streams/<stream_id>")
def resume_stream(stream_id: str) -> Response:
    """The rest of a streamed answer whose connection dropped, after the event named by `Last-Event-ID`."""
    return resumed_response(stream_id)


@bp.delete("/v1/chat/completions/streams/<stream_id>")
def delete_stream(stream_id: str):
    """Stop a streamed answer's generation now, as closing its only connection once did."""
    cancel_stream(stream_id)
    return jsonify({"id": stream_id, "object": "chat.completion.stream", "cancelled": True})


@bp.get("/v1/models")
def models():
    """The OpenAI model list: the one model this server serves."""
    return jsonify(
        {"object": "list", "data": [{"id": served_model_name(), "object": "model", "created": 0, "owned_by": "loupe"}]}
    )


@bp.get("/health")
def health():
    """Readiness: 200 once the model is loaded (with BACKEND=openai: while the engine behind answers); 503 while
    loading, after a failed load, when the engine behind does not answer, or when stopping."""
    settings, engine = services().settings, services().engine
    if engine.draining:
        return jsonify({"status": "shutting_down"}), 503
    if engine.backend is not None:
        backend = engine.backend
        if problem := engine.problem:  # BACKEND=openai: the engine behind is down, or serves another model
            return jsonify({"status": "error", "model": backend.name, "error": problem}), 503
        return jsonify(
            {
                "status": "ok",
                "backend": settings.backend,
                "model": backend.name,
                "device": backend.device,
                "dtype": backend.dtype,
                "kernels": backend.kernels,
                "queue_depth": engine.queue_depth,
            }
        )
    if engine.status == "error":
        return jsonify({"status": "error", "error": engine.error}), 503
    return jsonify({"status": "loading", "model": settings.model_id}), 503


@bp.get("/live")
def live():
    """Liveness: 200 whenever the process can answer, whatever the model is doing."""
    return jsonify({"status": "alive"})
