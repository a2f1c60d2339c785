"""Recording one chat request in the history by watching its engine events go by."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Iterable, Iterator

from loupe.errors import ClientClosedRequest, GenerationFailed, LoupeError
from loupe.history.store import HistoryStore, NewImage, utcnow
from loupe.inference import ChatRequest, Event, Finished, ImagePart, SamplingParams, TextDelta
from loupe.protocol.grounding import answer_boxes
from loupe.protocol.responses import usage_dict

log = logging.getLogger(__name__)


class Recording:
    """The history record of one request: saved once, as completed, failed or cancelled."""

    def __init__(self, store: HistoryStore, chat: ChatRequest, client: str | None, model: str):
        self.id = str(uuid.uuid4())
        self._store = store
        self._chat = chat
        self._client = client
        self._model = model
        self._created_at = utcnow()
        self._began = time.perf_counter()
        self._pieces: list[str] = []
        self.saved = False

    def observe(self, events: Iterable[Event]) -> Iterator[Event]:
        """Pass the events through, saving the record when the generation finishes or fails."""
        try:
            for event in events:
                if isinstance(event, TextDelta):
                    self._pieces.append(event.text)
                elif isinstance(event, Finished):
                    self._save("completed", finished=event)  # before the consumer reads the record back
                yield event
        except ClientClosedRequest:
            self.close()  # given up by the client, as a closed stream is: cancelled, not failed
            raise
        except LoupeError as error:
            self.fail(error)
            raise
        except Exception:
            self.fail(GenerationFailed("generation failed"))
            raise

    def fail(self, error: LoupeError) -> None:
        """Record the request as failed with the error the client was sent."""
        self._save("failed", error=error)

    def close(self) -> None:
        """The request is over: if nothing was recorded yet, the client stopped it."""
        self._save("cancelled")

    def _save(self, status: str, finished: Finished | None = None, error: LoupeError | None = None) -> None:
        """Write the record once; a history fault is logged and never breaks the answer."""
        if self.saved:
            return
        self.saved = True
        try:
            messages, new_images = messages_and_images(self._chat)
            answer = "".join(self._pieces)
            self._store.add(
                {
                    "id": self.id,
                    "created_at": self._created_at,
                    "finished_at": utcnow(),
                    "status": status,
                    "client": self._client,
                    "model": self._model,
                    "messages": messages,
                    "sampling": sampling_json(self._chat.sampling),
                    "stream": self._chat.stream,
                    "answer": answer,
                    "boxes": answer_boxes(answer, self._chat.image_sizes()),
                    "finish_reason": finished.finish_reason if finished else None,
                    "usage": usage_dict(finished) if finished else None,
                    "timings": finished.timings.to_dict() if finished else None,
                    "error": {**error.to_dict()["error"], "status": error.status} if error else None,
                },
                new_images,
            )
        except Exception:
            log.exception("history: could not record inference %s", self.id)
        else:
            log.debug(
                "history: recorded %s (%s) %.0f ms after it arrived",
                self.id,
                status,
                (time.perf_counter() - self._began) * 1000,
            )


def messages_and_images(chat: ChatRequest) -> tuple[list[dict], list[NewImage]]:
    """The conversation as JSON with each image replaced by its position; the images to store."""
    messages: list[dict] = []
    new_images: list[NewImage] = []
    for message in chat.messages:
        content = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                budget = {"detail": part.detail, "min_pixels": part.min_pixels, "max_pixels": part.max_pixels}
                content.append({"type": "image", "image": len(new_images), **_present(budget)})
                new_images.append(_new_image(part))
            else:
                content.append({"type": "text", "text": part.text})
        messages.append({"role": message.role, "content": content})
    return messages, new_images


def _new_image(part: ImagePart) -> NewImage:
    """The original bytes of a loaded image part (never its base64 or its URL)."""
    if part.data is None or part.mime is None or part.width is None or part.height is None:
        raise ValueError("an image part must be loaded (images.load_request_images) before it is recorded")
    return NewImage(part.data, part.mime, part.width, part.height)


def _present(values: dict) -> dict:
    """The entries that have a value."""
    return {k: v for k, v in values.items() if v is not None}


def sampling_json(sampling: SamplingParams) -> dict:
    """The sampling fields for a JSON column: stop strings as a list; the response format as the request's
    OpenAI object (its schema parsed), or None for a free answer."""
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(sampling).items()}
    fmt = sampling.response_format
    values["response_format"] = fmt.to_dict() if fmt.constrained else None
    return values
