"""Reading Qwen3-VL's grounding answers: boxes and points found in any text, mapped to the original image's pixels."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loupe.protocol.grounding import MAX_REGIONS, Region, answer_boxes, parse_regions, to_pixels

coordinate = st.integers(min_value=0, max_value=1000)
label = st.text(max_size=30)


@st.composite
def boxes(draw):
    """A box as Qwen3-VL writes one: two corners, top-left first, with some area."""
    x1, x2 = sorted(draw(st.lists(coordinate, min_size=2, max_size=2, unique=True)))
    y1, y2 = sorted(draw(st.lists(coordinate, min_size=2, max_size=2, unique=True)))
    return {"bbox_2d": [x1, y1, x2, y2], "label": draw(label)}


# Prose around an answer: anything but braces, which would start or end an object of its own.
prose = st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=80)


def test_the_cookbook_answer_in_a_json_fence():
    answer = (
        "Here they are:\n```json\n[\n"
        '  {"bbox_2d": [135, 114, 516, 672], "label": "cat"},\n'
        '  {"bbox_2d": [600, 20, 980, 500], "label": "dog"}\n]\n```'
    )
    assert parse_regions(answer) == [Region("cat", box=(135, 114, 516, 672)), Region("dog", box=(600, 20, 980, 500))]


def test_points_and_almost_json():
    answer = "[{'point_2d': [250, 400], 'label': 'eye'}, {bbox_2d: [1, 2, 3, 4,], label: \"x\"}]"
    assert parse_regions(answer) == [Region("eye", point=(250, 400)), Region("x", box=(1, 2, 3, 4))]


def test_a_wrapped_list_yields_its_objects_and_reversed_corners_are_put_in_order():
    answer = json.dumps({"objects": [{"label": "a", "bbox_2d": [900, 800, 100, 50]}]})
    assert parse_regions(answer) == [Region("a", box=(100, 50, 900, 800))]


def test_nested_attributes_braces_in_labels_and_a_stray_quote_in_prose():
    answer = 'He said "find them\n[{"bbox_2d": [1, 2, 30, 40], "label": "a {b}", "attributes": {"color": "red"}}]'
    assert parse_regions(answer) == [Region("a {b}", box=(1, 2, 30, 40))]


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "No boxes here.",
        '{"bbox_2d": [1, 2, 3]}',
        '{"bbox_2d": "1, 2, 3, 4"}',
        '{"bbox_2d": [1, 2, true, 4]}',
        '{"bbox_2d": [1, 2, NaN, 4]}',
        '{"bbox_2d": [5, 5, 5, 90]}',
        '{"point_2d": [1]}',
        '{"label": "cat"}',
        "[" * 5000 + "{" * 5000,
        '{"bbox_2d": [' + "9" * 400 + ", 1, 2, 3]}",
    ],
)
def test_garbage_gives_no_regions(answer):
    assert parse_regions(answer) == []


def test_coordinates_beyond_the_scale_are_clamped_to_the_image():
    assert parse_regions('{"bbox_2d": [-20, 10, 1016, 672], "label": 7}') == [Region("7", box=(0, 10, 1000, 672))]


@given(st.text())
def test_any_text_parses_without_error(text):
    for region in parse_regions(text):
        coordinates = region.box or region.point
        assert coordinates is not None and all(0 <= c <= 1000 for c in coordinates)


@given(st.lists(boxes(), max_size=6), prose, prose)
def test_boxes_written_as_json_are_read_back_exactly(written, before, after):
    answer = f"{before}\n```json\n{json.dumps(written, ensure_ascii=False)}\n```\n{after}"
    assert parse_regions(answer) == [Region(b["label"], box=tuple(b["bbox_2d"])) for b in written]


@given(st.lists(boxes(), min_size=1, max_size=6), st.data())
def test_a_cut_off_answer_keeps_the_boxes_it_finished(written, data):
    answer = json.dumps(written)
    cut = data.draw(st.integers(min_value=0, max_value=len(answer)))
    found = parse_regions(answer[:cut])
    assert found == [Region(b["label"], box=tuple(b["bbox_2d"])) for b in written][: len(found)]


@given(boxes(), st.integers(1, 10_000), st.integers(1, 10_000))
def test_pixels_stay_inside_the_original_image(box, width, height):
    [region] = parse_regions(json.dumps(box))
    shown = to_pixels(region, width, height, image=0)
    x1, y1, x2, y2 = shown["bbox"]
    assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
    assert shown["label"] == box["label"][:200]


def test_boxes_are_in_the_last_images_original_pixels():
    # 1000 relative units are the whole edge of the original image, however it was resized for the model.
    answer = (
        '```json\n[{"bbox_2d": [250, 500, 750, 1000], "label": "cat"}, {"point_2d": [100, 100], "label": "eye"}]\n```'
    )
    assert answer_boxes(answer, [(64, 64), (1600, 1200)]) == [
        {"label": "cat", "image": 1, "bbox": [400.0, 600.0, 1200.0, 1200.0]},
        {"label": "eye", "image": 1, "point": [160.0, 120.0]},
    ]
    assert answer_boxes(answer, []) == []


@settings(max_examples=20)
@given(st.integers(MAX_REGIONS, MAX_REGIONS + 50))
def test_the_number_of_regions_is_bounded(count):
    answer = json.dumps([{"bbox_2d": [1, 1, 9, 9], "label": "x"}] * count)
    assert len(parse_regions(answer)) == MAX_REGIONS
