"""Grounding answers: the boxes and points Qwen3-VL writes as JSON, found in any text and mapped to pixels; pure.

Qwen3-VL answers "where is X" with JSON such as `[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}]` or
`{"point_2d": [x, y], "label": "…"}`, usually in a ```json fence, in coordinates relative to the image
it saw: 0–1000 on each axis, whatever its size. Relative coordinates survive every resize the image
went through on the way (IMAGE_MAX_EDGE, the processor's patch multiple), so they map straight onto
the original upload. The parser reads whatever the model wrote: garbage gives no boxes, never an error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SCALE = 1000.0  # Qwen3-VL's relative coordinates run from 0 to 1000 on both axes
MAX_LABEL_CHARS = 200
MAX_REGIONS = 256  # more than any real answer holds; bounds the response whatever the model writes

_KEYED_LIST = r"""["']?{key}["']?\s*:\s*\[([^\[\]]*)\]"""
_LABEL = re.compile(r"""["']?label["']?\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)')""")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Region:
    """A box ([x1, y1, x2, y2]) or a point ([x, y]) in 0–1000 relative coordinates, with its label."""

    label: str
    box: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None


def parse_regions(text: str) -> list[Region]:
    """Every box and point in a model's answer, in the order written; none if there are none."""
    regions: list[Region] = []
    for source, flat in _objects(text):
        region = _region(source, flat)
        if region is not None:
            regions.append(region)
            if len(regions) == MAX_REGIONS:
                break
    return regions


def _objects(text: str) -> Iterator[tuple[str, bool]]:
    """Every balanced `{…}` in the text as it closes (inner before outer), and whether it holds no other.

    One pass, aware of double-quoted strings (a brace in a label is text); a newline ends a string,
    as JSON strings cannot hold one, so a stray quote in prose spoils one line at most. A wrapper
    (`{"objects": [{…}, {…}]}`) yields each inner object, and a cut-off answer every object it closed.
    """
    opened: list[list[int]] = []  # [start, holds another object] of each object still open
    in_string = escaped = False
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char in '"\n':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            if opened:
                opened[-1][1] = True
            opened.append([i, False])
        elif char == "}" and opened:
            start, nested = opened.pop()
            yield text[start : i + 1], not nested


def _region(source: str, flat: bool) -> Region | None:
    """The region one object describes: strict JSON first, else (when flat) the keys read one by one."""
    if "_2d" not in source:
        return None
    fields = _loads(source)
    if fields is None:
        if not flat:
            return None  # its own keys cannot be told from its children's without JSON
        fields = _loose_fields(source)
    label = _label(fields.get("label"))
    box = _coordinates(fields.get("bbox_2d"), 4)
    if box is not None:
        x1, y1, x2, y2 = box
        box = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
        if box[0] == box[2] or box[1] == box[3]:
            return None  # no area once clamped to the image: nothing to draw
        return Region(label, box=box)
    point = _coordinates(fields.get("point_2d"), 2)
    if point is not None:
        return Region(label, point=(point[0], point[1]))
    return None


def _loads(source: str) -> dict | None:
    """The object as JSON, or None when it is not valid JSON."""
    try:
        value = json.loads(source)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _loose_fields(source: str) -> dict[str, Any]:
    """Keys read from almost-JSON (single quotes, bare keys, trailing commas): lists of numbers, the label."""
    fields: dict[str, Any] = {}
    for key in ("bbox_2d", "point_2d"):
        found = re.search(_KEYED_LIST.format(key=key), source)
        if found:
            fields[key] = [float(n) for n in _NUMBER.findall(found.group(1))]
    label = _LABEL.search(source)
    if label:
        text = label.group(1) if label.group(1) is not None else label.group(2)
        fields["label"] = _unescape(text)
    return fields


def _unescape(text: str) -> str:
    """A JSON string's escapes undone where they are valid; the text as written where not."""
    try:
        value = json.loads(f'"{text}"')
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def _coordinates(raw: Any, count: int) -> tuple[float, ...] | None:
    """`count` finite numbers clamped to 0–1000, or None for anything else."""
    if not isinstance(raw, list) or len(raw) != count:
        return None
    values = []
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float: garbage
            return None
        if not math.isfinite(number):
            return None
        values.append(min(max(number, 0.0), SCALE))
    return tuple(values)


def _label(raw: Any) -> str:
    """A label as text: strings as they are, numbers written out, anything else empty."""
    if isinstance(raw, str):
        return raw[:MAX_LABEL_CHARS]
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return str(raw)
    return ""


def to_pixels(region: Region, width: int, height: int, image: int) -> dict:
    """A region as the API shows it: `label`, `image` and `bbox` [x1, y1, x2, y2] or `point` [x, y] in pixels."""
    if region.box is not None:
        x1, y1, x2, y2 = region.box
        coordinates = {"bbox": [_pixel(x1, width), _pixel(y1, height), _pixel(x2, width), _pixel(y2, height)]}
    else:
        assert region.point is not None
        x, y = region.point
        coordinates = {"point": [_pixel(x, width), _pixel(y, height)]}
    return {"label": region.label, "image": image, **coordinates}


def _pixel(relative: float, size: int) -> float:
    """A 0–1000 coordinate in pixels of an edge of `size`, to a tenth of a pixel."""
    return round(relative / SCALE * size, 1)


def answer_boxes(text: str, image_sizes: list[tuple[int, int]]) -> list[dict]:
    """The boxes and points of an answer, in pixels of the conversation's last image; none without an image.

    The model sees every image of the conversation, but an answer that gives coordinates gives them
    for one image, and Qwen3-VL's grounding is trained on one image at a time: the last is the one a
    question like "find every X" is about.
    """
    if not image_sizes or "_2d" not in text:
        return []
    width, height = image_sizes[-1]
    index = len(image_sizes) - 1
    return [to_pixels(region, width, height, index) for region in parse_regions(text)]
