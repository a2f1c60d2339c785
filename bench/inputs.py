"""The benchmark's fixed inputs: a deterministic photo-like image, the questions, the conversations."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# The "phone photo" every client sends; the server's IMAGE_MAX_EDGE (768) brings it to 768x576,
# the naive baseline (no image budget) feeds it to the model as it is.
PHOTO_SIZE = (1536, 1152)
SEED = 7
FIRST_QUESTION = "Describe this picture in detail."
FOLLOW_UP_QUESTION = "What colour is the boat, and how many trees are there?"
PAIRED_QUESTION = "What would you call this picture?"  # the paired decodes' question (bench/run.py)
CLIENT_QUESTIONS = (
    "What is in the sky?",
    "Describe the water in this picture.",
    "Is it morning or evening? Why?",
    "List every object you can see.",
)
_SPECIAL = re.compile(r"<\|[^|>]*\|>")


def photo(size: tuple[int, int] = PHOTO_SIZE, variant: int = 0) -> Image.Image:
    """A deterministic landscape: sky gradient, sun, hills, lake, boat, trees, and sensor noise.

    Each `variant` moves the sun and the boat and draws other noise: another photo of the same kind,
    so concurrent clients do not share an image (nor a cached image prefix).
    """
    width, height = size
    rng = np.random.default_rng(SEED + variant)
    shift = 9 * variant
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    sky = (1 - rows) * np.array([70, 130, 220]) + rows * np.array([250, 200, 150])
    pixels = np.broadcast_to(sky, (height, width, 3)).astype(np.float32)
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    u, v = width / 100, height / 100
    draw.ellipse([(72 - shift) * u, 10 * v, (84 - shift) * u, 26 * v], fill=(255, 236, 160))
    draw.polygon(
        [
            (0, 62 * v),
            (22 * u, 38 * v),
            (47 * u, 58 * v),
            (70 * u, 35 * v),
            (100 * u, 60 * v),
            (100 * u, 100 * v),
            (0, 100 * v),
        ],
        fill=(60, 110, 60),
    )
    draw.rectangle([0, 66 * v, 100 * u, 100 * v], fill=(40, 90, 140))
    b = 40 - shift  # the boat's left edge
    draw.polygon(
        [(b * u, 78 * v), ((b + 18) * u, 78 * v), ((b + 15) * u, 84 * v), ((b + 3) * u, 84 * v)], fill=(200, 40, 40)
    )
    draw.line([((b + 9) * u, 78 * v), ((b + 9) * u, 64 * v)], fill=(90, 60, 30), width=max(2, int(u / 2)))
    draw.polygon([((b + 9.5) * u, 65 * v), ((b + 9.5) * u, 77 * v), ((b + 17) * u, 77 * v)], fill=(245, 245, 235))
    for x in (8, 15, 88):
        draw.rectangle([(x - 0.6) * u, 52 * v, (x + 0.6) * u, 64 * v], fill=(80, 50, 25))
        draw.ellipse([(x - 4) * u, 38 * v, (x + 4) * u, 56 * v], fill=(30, 85, 35))
    image = image.filter(ImageFilter.GaussianBlur(radius=1.2))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 6.0, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """The image as a JPEG file."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def data_url(jpeg: bytes) -> str:
    """A base64 `data:` URL for a JPEG."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def first_turn(image_url: str, question: str = FIRST_QUESTION) -> list[dict]:
    """OpenAI messages: one user turn with the image and a question."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": question},
            ],
        }
    ]


def follow_up(image_url: str, answer: str, question: str = FOLLOW_UP_QUESTION) -> list[dict]:
    """OpenAI messages: the first turn, its answer as the assistant's turn, and a new question."""
    return [
        *first_turn(image_url),
        {"role": "assistant", "content": [{"type": "text", "text": clean_answer(answer)}]},
        {"role": "user", "content": [{"type": "text", "text": question}]},
    ]


def clean_answer(text: str) -> str:
    """A random-weight answer made safe to send back (no special-token strings, never empty)."""
    return _SPECIAL.sub("", text).strip() or "I see a picture."
