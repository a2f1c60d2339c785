"""A request's image budget: `detail` (low/high/auto) or explicit `min_pixels`/`max_pixels`, per image,
bounded by the server's limits; pure.

What the model sees of an image costs image tokens, one per 32x32 pixels: the budget sets how many.
`high` is the server's ceiling (longest edge `IMAGE_MAX_EDGE`), `low` at most `IMAGE_LOW_PIXELS`, `auto`
what `IMAGE_DETAIL` says. The runtime hands the bounds to the model's image processor, which resizes
within them as it always does (keeping the aspect ratio, sides a multiple of 32).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from loupe.errors import InvalidRequest
from loupe.inference import ImagePart
from loupe.settings import Settings

DETAILS = ("auto", "low", "high")
SMALLEST = 32 * 32  # one image token's pixels (patch 16 x merge 2, squared): no image has fewer


@dataclass(frozen=True)
class Budget:
    """What a request or an image part asked for; None where it said nothing."""

    detail: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None


def read_budget(fields: Mapping[str, Any], where: str, from_form: bool = False) -> Budget:
    """`detail`, `min_pixels` and `max_pixels` of an image_url object or a request, checked for type."""
    detail = fields.get("detail")
    if detail is None or (from_form and detail == ""):  # an HTML form sends every input, empty or not
        detail = None
    elif detail not in DETAILS:
        raise InvalidRequest(f"`{where}detail` must be one of {', '.join(DETAILS)}.", param=f"{where}detail")
    return Budget(
        detail,
        _pixels(fields.get("min_pixels"), f"{where}min_pixels", from_form),
        _pixels(fields.get("max_pixels"), f"{where}max_pixels", from_form),
    )


def _pixels(raw: Any, name: str, from_form: bool) -> int | None:
    """A pixel count: a whole number of at least SMALLEST (form fields arrive as text, empty when not set)."""
    if raw is None or (from_form and raw == ""):
        return None
    if from_form and isinstance(raw, str) and raw.isdecimal():  # what int() reads: isdigit() also takes "²"
        raw = int(raw)
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < SMALLEST:
        raise InvalidRequest(f"`{name}` must be a whole number of pixels, at least {SMALLEST}.", param=name)
    return raw


def apply_budget(part: ImagePart, own: Budget, request: Budget, settings: Settings, param: str) -> ImagePart:
    """The image part with its pixel bounds resolved: its own fields first, then the request's, then the server's.

    `min_pixels`/`max_pixels` None leave the model's image processor its own bound; neither may exceed
    the `IMAGE_MAX_EDGE` square (a larger one is lowered to it: the edge bounds the image anyway).
    """
    detail = own.detail or request.detail or "auto"
    if detail == "auto":
        detail = settings.image_detail
    ceiling = settings.image_max_edge**2
    max_pixels = own.max_pixels or request.max_pixels or (settings.image_low_pixels if detail == "low" else None)
    min_pixels = own.min_pixels or request.min_pixels
    if max_pixels is not None:
        max_pixels = min(max_pixels, ceiling)
    if min_pixels is not None:
        min_pixels = min(min_pixels, ceiling)
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise InvalidRequest(
            f"`min_pixels` ({min_pixels}) exceeds the image's `max_pixels` ({max_pixels}, with detail {detail}).",
            param=param,
        )
    return replace(part, detail=detail, min_pixels=min_pixels, max_pixels=max_pixels)
