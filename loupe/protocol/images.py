"""Image intake: bytes or data URLs → validated, normalised RGB images within the configured limits."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from collections.abc import Callable
from dataclasses import replace

from PIL import Image, ImageOps, UnidentifiedImageError

from loupe.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from loupe.inference import ChatRequest, ImagePart, Message
from loupe.settings import Settings

ACCEPTED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
MAX_PIXELS = 64_000_000  # decoded size refused before decoding: a 10 MB PNG can hide gigabytes
MIN_EDGE = 32  # the model's patch (16) × merge (2): a smaller side cannot be split into tokens
MAX_ASPECT_RATIO = 200
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)$", re.S)

Fetcher = Callable[[str, Settings], bytes]


def load_request_images(request: ChatRequest, settings: Settings, fetch: Fetcher | None = None) -> ChatRequest:
    """Decode every image of the request; remote URLs go through `fetch` when allowed."""
    index = 0
    messages = []
    for message in request.messages:
        parts = []
        for part in message.parts:
            if isinstance(part, ImagePart) and part.image is None:
                data = part.data if part.data is not None else _bytes_from_url(part.url or "", settings, fetch)
                loaded = read_image(data, settings, param=f"image[{index}]")
                part = replace(loaded, detail=part.detail, min_pixels=part.min_pixels, max_pixels=part.max_pixels)
                index += 1
            parts.append(part)
        messages.append(Message(message.role, tuple(parts)))
    return replace(request, messages=tuple(messages))


def _bytes_from_url(url: str, settings: Settings, fetch: Fetcher | None) -> bytes:
    """The bytes behind a data URL, or a remote URL when remote images are allowed."""
    if url.startswith("data:"):
        return decode_data_url(url, settings)
    if url.startswith(("http://", "https://")):
        if not settings.allow_remote_images or fetch is None:
            raise InvalidRequest(
                "Remote image URLs are not fetched by this server; send the image as a data URL "
                "(data:image/png;base64,...) or as a form-data file.",
                param="image_url",
            )
        return fetch(url, settings)
    raise InvalidRequest("An image URL must be a base64 data URL (data:image/...;base64,...).", param="image_url")


def decode_data_url(url: str, settings: Settings) -> bytes:
    """The bytes of a base64 `data:` URL, refusing oversize data before decoding it."""
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidRequest("An image data URL must look like data:image/png;base64,....", param="image_url")
    mime = (match.group("mime") or "").lower()
    if mime and not mime.startswith("image/"):
        raise UnsupportedMediaType(f"Data URL type {mime} is not an image.", param="image_url")
    encoded = match.group("data")
    if len(encoded) * 3 // 4 > settings.max_image_bytes + 2:
        raise _too_large(settings)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("The image data URL is not valid base64.", param="image_url") from None


def decode_image(data: bytes, settings: Settings, param: str = "image") -> Image.Image:
    """Validate image bytes and return an RGB image ready for the model's image processor."""
    image = read_image(data, settings, param).image
    assert image is not None
    return image


def read_image(data: bytes, settings: Settings, param: str = "image") -> ImagePart:
    """Validate image bytes: a loaded part with the RGB image, the original bytes, MIME type and size."""
    if len(data) > settings.max_image_bytes:
        raise _too_large(settings)
    image = _open(data, param)
    if image.format not in ACCEPTED_FORMATS:
        raise UnsupportedMediaType(
            f"Image format {image.format or 'unknown'} is not supported; send PNG, JPEG, WebP or GIF.", param=param
        )
    mime, (width, height) = ACCEPTED_FORMATS[image.format], image.size
    if width * height > MAX_PIXELS:
        raise PayloadTooLarge(f"The image is {width}x{height} pixels; the limit is {MAX_PIXELS:,} pixels.", param=param)
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InvalidRequest(f"The image's aspect ratio is beyond {MAX_ASPECT_RATIO}:1.", param=param)
    try:
        image.seek(0)  # a GIF or animated WebP: the first frame
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        raise InvalidRequest("The image could not be decoded (it may be truncated or corrupt).", param=param) from None
    width, height = image.size  # as displayed: a photo turned by its EXIF orientation has its sides swapped
    return ImagePart(
        data=data, image=fit_to_edges(to_rgb(image), settings.image_max_edge), mime=mime, width=width, height=height
    )


def _open(data: bytes, param: str) -> Image.Image:
    """Open (identify) image bytes without decoding the pixels yet."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PayloadTooLarge("The image has too many pixels.", param=param) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidRequest(
            "The data is not an image this server can read; send PNG, JPEG, WebP or GIF.", param=param
        ) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode: transparency flattened on white; 16-bit, palette, grey and CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything above 255 to white.
        image = image.point(lambda v: v / 256 if image.mode.startswith("I;16") else v / 65536).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def fit_to_edges(image: Image.Image, max_edge: int) -> Image.Image:
    """Downscale so the longest edge is at most `max_edge`, then upscale a side below the minimum."""
    width, height = image.size
    if max(width, height) > max_edge:
        scale = max_edge / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if min(width, height) < MIN_EDGE:
        scale = MIN_EDGE / min(width, height)
        image = image.resize(
            (max(MIN_EDGE, round(width * scale)), max(MIN_EDGE, round(height * scale))), Image.Resampling.BICUBIC
        )
    return image


def _too_large(settings: Settings) -> PayloadTooLarge:
    return PayloadTooLarge(f"An image may be at most {settings.max_image_bytes:,} bytes.", param="image")
