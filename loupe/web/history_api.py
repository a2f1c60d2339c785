"""HTTP routes of the history: list, read, fetch images, delete, and ask-and-record (`POST /inferences`)."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from flask import Blueprint, jsonify, request, send_file, url_for

from loupe.errors import GenerationFailed, InvalidRequest, NotFound
from loupe.history.store import HistoryStore
from loupe.web.chat_flow import collect_answer, load_chat_request, start_chat
from loupe.web.services import services

log = logging.getLogger(__name__)

bp = Blueprint("history", __name__)

DEFAULT_LIMIT, MAX_LIMIT = 20, 100
STATUSES = ("completed", "failed", "cancelled")
PREVIEW_CHARS = 200
# The largest image index a record can have: the column is a 32-bit INTEGER in PostgreSQL, and a larger
# number sent to the database fails there (SQLite: past 64 bits) instead of finding nothing.
MAX_IMAGE_POSITION = 2**31 - 1


@bp.get("/inferences")
def list_inferences():
    """Records newest first: `limit`, `cursor` (from `next_cursor`), `status`, `since`, `until`."""
    page = store().page(
        read_limit(request.args),
        read_cursor(request.args.get("cursor")),
        read_status(request.args.get("status")),
        read_time(request.args, "since"),
        read_time(request.args, "until"),
    )
    last = page.records[-1] if page.records and page.more else None
    return jsonify(
        {
            "object": "list",
            "data": [summary_body(r) for r in page.records],
            "has_more": page.more,
            "next_cursor": encode_cursor(last["created_at"], last["id"]) if last else None,
        }
    )


@bp.get("/inferences/<record_id>")
def get_inference(record_id: str):
    """The whole record."""
    return jsonify(record_body(find(record_id)))


@bp.get("/inferences/<record_id>/image")
def get_first_image(record_id: str):
    """The record's first image."""
    return get_image(record_id, 0)


@bp.get("/inferences/<record_id>/images/<int:position>")
def get_image(record_id: str, position: int):
    """The original bytes of a record's image, with its own Content-Type; immutable, so cacheable."""
    found = store().image(checked_id(record_id), position) if position <= MAX_IMAGE_POSITION else None
    if found is None:
        raise NotFound(f"Inference {record_id} has no image {position}.")
    row, path = found
    if not path.is_file():
        log.error("history: image %s of %s is missing on disk", row["sha256"], record_id)
        raise NotFound(f"Inference {record_id} has no image {position}.")
    response = send_file(path, mimetype=row["mime"], etag=row["sha256"], max_age=86400, conditional=True)
    response.cache_control.public = False
    response.cache_control.private = True  # someone's photo: browsers may cache it, shared proxies not
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.delete("/inferences/<record_id>")
def delete_inference(record_id: str):
    """Delete a record and the images no other record uses."""
    if not store().delete(checked_id(record_id)):
        raise NotFound(f"No inference {record_id}.")
    return jsonify({"id": record_id, "object": "inference.deleted", "deleted": True})


@bp.post("/inferences")
def create_inference():
    """Ask (form-data or JSON, as /v1/chat/completions) and answer with the stored record."""
    history = store()
    chat = load_chat_request()
    if chat.stream:
        raise InvalidRequest(
            "POST /inferences answers with the stored record; stream from /v1/chat/completions instead.", param="stream"
        )
    run = start_chat(chat)
    collect_answer(run)
    record = history.get(run.recording.id) if run.recording is not None else None
    if record is None:
        raise GenerationFailed("the inference was answered but could not be recorded")
    return jsonify(record_body(record)), 201, {"Location": record_url(record["id"])}


def store() -> HistoryStore:
    """The app's history store, or 404 when history is off."""
    history = services().history
    if history is None:
        raise NotFound("History is off on this server (HISTORY=off).", code="history_disabled")
    return history


def checked_id(record_id: str) -> str:
    """A record id in canonical form; anything that is not a UUID (`../`, junk) is 404."""
    try:
        parsed = uuid.UUID(record_id)
    except ValueError:
        raise NotFound(f"No inference {record_id}.") from None
    if str(parsed) != record_id.lower():
        raise NotFound(f"No inference {record_id}.")
    return str(parsed)


def find(record_id: str) -> dict:
    """The record with this id, or 404."""
    record = store().get(checked_id(record_id))
    if record is None:
        raise NotFound(f"No inference {record_id}.")
    return record


def read_limit(args: Mapping[str, str]) -> int:
    """`limit`: 1 to MAX_LIMIT, default DEFAULT_LIMIT."""
    raw = args.get("limit", "")
    if raw == "":
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequest(f"`limit` must be a whole number from 1 to {MAX_LIMIT}.", param="limit")
    return int(raw)


def read_status(raw: str | None) -> str | None:
    """`status`: one of STATUSES, or none for all."""
    if raw in (None, ""):
        return None
    if raw not in STATUSES:
        raise InvalidRequest(f"`status` must be one of {', '.join(STATUSES)}.", param="status")
    return raw


def read_time(args: Mapping[str, str], name: str) -> datetime | None:
    """An ISO 8601 date or time (UTC unless it says otherwise), as stored: naive UTC."""
    raw = args.get(name, "")
    if raw == "":
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(
            f"`{name}` must be an ISO 8601 date or time, e.g. 2026-11-23T20:00:00Z.", param=name
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def encode_cursor(created_at: datetime, record_id: str) -> str:
    """An opaque cursor: the position (time, id) of the last record on a page."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{record_id}".encode()).decode().rstrip("=")


def read_cursor(raw: str | None) -> tuple[datetime, str] | None:
    """Decode a `next_cursor`; anything else is 400."""
    if raw in (None, ""):
        return None
    try:
        created, record_id = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode().split("|")
        return datetime.fromisoformat(created), str(uuid.UUID(record_id))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("`cursor` must be a `next_cursor` from an earlier page.", param="cursor") from None


def timestamp(moment: datetime | None) -> str | None:
    """A stored UTC time as ISO 8601 with a Z."""
    return moment.isoformat(timespec="milliseconds") + "Z" if moment is not None else None


def image_url(record_id: str, position: int) -> str:
    """Where a record's image is fetched (under the app's mount point, e.g. behind a proxy's prefix)."""
    return url_for("history.get_image", record_id=record_id, position=position)


def record_url(record_id: str) -> str:
    """Where a record is read and deleted."""
    return url_for("history.get_inference", record_id=record_id)


def record_body(record: dict) -> dict:
    """The whole record as the API shows it: images as URLs, never their bytes."""
    record_id = record["id"]
    messages = [
        {
            "role": m["role"],
            "content": [
                {**part, "url": image_url(record_id, part["image"])} if part["type"] == "image" else part
                for part in m["content"]
            ],
        }
        for m in record["messages"]
    ]
    return {
        "id": record_id,
        "object": "inference",
        "created_at": timestamp(record["created_at"]),
        "finished_at": timestamp(record["finished_at"]),
        "status": record["status"],
        "client": record["client"],
        "model": record["model"],
        "stream": record["stream"],
        "messages": messages,
        "sampling": record["sampling"],
        "response_format": record["sampling"].get("response_format"),  # the schema asked for; None: free text
        "answer": record["answer"],
        "boxes": record["boxes"] or [],
        "finish_reason": record["finish_reason"],
        "usage": record["usage"],
        "timings": record["timings"],
        "error": record["error"],
        "images": [
            {
                "index": i["position"],
                "sha256": i["sha256"],
                "mime": i["mime"],
                "bytes": i["size"],
                "width": i["width"],
                "height": i["height"],
                "url": image_url(record_id, i["position"]),
            }
            for i in record["images"]
        ],
    }


def summary_body(record: dict) -> dict:
    """A list entry: enough for a history panel (question, answer preview, thumbnail)."""
    questions = [_text(m) for m in record["messages"] if m["role"] == "user"]
    return {
        "id": record["id"],
        "object": "inference",
        "created_at": timestamp(record["created_at"]),
        "finished_at": timestamp(record["finished_at"]),
        "status": record["status"],
        "model": record["model"],
        "first_question": questions[0][:PREVIEW_CHARS] if questions else "",
        "question": questions[-1][:PREVIEW_CHARS] if questions else "",
        "answer_preview": record["answer"][:PREVIEW_CHARS],
        "finish_reason": record["finish_reason"],
        "image_count": len(record["images"]),
        "box_count": len(record["boxes"] or []),
        "thumbnail_url": image_url(record["id"], 0) if record["images"] else None,
        "url": record_url(record["id"]),
    }


def _text(message: dict) -> str:
    """A message's text parts, joined."""
    return " ".join(p["text"] for p in message["content"] if p["type"] == "text")
