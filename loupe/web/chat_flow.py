"""The chat flow both blueprints share: read a chat request, run it on the engine (recorded), collect or stream it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from flask import request
from werkzeug.exceptions import BadRequest

from loupe.engine.generation import Generation
from loupe.errors import ClientClosedRequest, GenerationFailed, InvalidRequest, LoupeError, UnsupportedMediaType
from loupe.history.recorder import Recording
from loupe.inference import ChatRequest, Event, Finished
from loupe.protocol.chat_requests import parse_form_request, parse_json_request
from loupe.protocol.images import load_request_images
from loupe.protocol.remote_images import fetch_image
from loupe.protocol.responses import collect
from loupe.settings import Settings
from loupe.web.disconnects import cancel_on_disconnect
from loupe.web.observability import observe
from loupe.web.services import services


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


def served_model_name() -> str:
    """The loaded model's name, or the configured id while loading."""
    backend = services().engine.backend
    return backend.name if backend is not None else services().settings.model_id


def load_chat_request() -> ChatRequest:
    """The request body as a ChatRequest with every image decoded (and its original bytes kept)."""
    settings = services().settings
    return load_request_images(read_chat_request(settings), settings, fetch_image)


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
        if "image" in request.form:  # `curl -F image=photo.jpg` (no @) sends the name: it was answered without it
            raise InvalidRequest("`image` must be a file: with curl, -F image=@photo.jpg.", param="image")
        files = [f.read(settings.max_image_bytes + 1) for f in request.files.getlist("image")]
        return parse_form_request(_form_fields(), files, settings)
    raise UnsupportedMediaType("Send application/json or multipart/form-data.")


def _form_fields() -> dict[str, str]:
    """The form's fields, with a `schema` sent as a file (`-F schema=@idcard.json`) read in as text."""
    fields = request.form.to_dict()
    upload = request.files.get("schema")
    if upload is not None:
        try:
            fields["schema"] = upload.read().decode("utf-8")  # the body's size is already bounded
        except UnicodeDecodeError:
            raise InvalidRequest("The `schema` file must be UTF-8 JSON.", param="schema") from None
    return fields


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


def close_at_end(frames: Iterator[str], run: ChatRun) -> Iterator[str]:
    """Close the run when the stream ends for any reason, a client disconnect included."""
    try:
        yield from frames
    finally:
        run.close()
