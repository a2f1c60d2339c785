"""Image intake: formats, limits, decoding failures and normalisation, without a model."""

import base64
import io

import pytest
from PIL import Image

from loupe.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from loupe.inference import ChatRequest, ImagePart, Message, SamplingParams, TextPart
from loupe.protocol.images import decode_data_url, decode_image, load_request_images
from loupe.settings import Settings

SETTINGS = Settings.from_mapping({"IMAGE_MAX_EDGE": "64", "MAX_IMAGE_BYTES": "200000"})


def encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_accepted_formats_decode_to_rgb(fmt):
    image = decode_image(encode(Image.new("RGB", (40, 40), (10, 200, 30)), fmt), SETTINGS)
    assert image.mode == "RGB" and image.size == (40, 40)


def test_other_formats_are_415():
    with pytest.raises(UnsupportedMediaType, match="BMP"):
        decode_image(encode(Image.new("RGB", (40, 40)), "BMP"), SETTINGS)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_garbage_is_400(data):
    with pytest.raises(InvalidRequest):
        decode_image(data, SETTINGS)


def test_truncated_image_is_400():
    data = encode(Image.effect_noise((60, 60), 50).convert("RGB"), "PNG")
    with pytest.raises(InvalidRequest, match="truncated"):
        decode_image(data[: len(data) // 2], SETTINGS)


def test_file_over_the_byte_limit_is_413():
    with pytest.raises(PayloadTooLarge):
        decode_image(b"\0" * 200001, SETTINGS)


def test_decompression_bomb_is_413():
    bomb = encode(Image.new("1", (12000, 12000)), "PNG")  # tiny file, 144 million pixels
    assert len(bomb) < 200000
    with pytest.raises(PayloadTooLarge):
        decode_image(bomb, SETTINGS)


def test_extreme_aspect_ratio_is_400():
    with pytest.raises(InvalidRequest, match="aspect"):
        decode_image(encode(Image.new("RGB", (4020, 20)), "PNG"), SETTINGS)


def test_large_image_is_downscaled_to_the_max_edge_keeping_its_shape():
    assert decode_image(encode(Image.new("RGB", (400, 200)), "PNG"), SETTINGS).size == (64, 32)


def test_small_image_is_upscaled_to_the_minimum_side():
    assert decode_image(encode(Image.new("RGB", (8, 4)), "PNG"), SETTINGS).size == (64, 32)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = encode(Image.new("RGB", (60, 40)), "JPEG", exif=exif.tobytes())
    assert decode_image(data, SETTINGS).size == (40, 60)


def test_transparency_is_flattened_on_white():
    image = decode_image(encode(Image.new("RGBA", (40, 40), (255, 0, 0, 0)), "PNG"), SETTINGS)
    assert image.getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("L", 128, (128, 128, 128)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 32768, (128, 128, 128)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
    ],
)
def test_other_modes_become_rgb(mode, value, expected):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    image = decode_image(encode(Image.new(mode, (40, 40), value), fmt), SETTINGS)
    assert image.mode == "RGB"
    assert all(abs(a - b) <= 2 for a, b in zip(image.getpixel((3, 3)), expected, strict=True))


def test_palette_with_transparency():
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 255] * 256)
    image.info["transparency"] = 0
    assert decode_image(encode(image, "PNG", transparency=0), SETTINGS).getpixel((1, 1)) == (255, 255, 255)


def test_data_urls():
    data = encode(Image.new("RGB", (40, 40)), "PNG")
    assert decode_data_url("data:image/png;base64," + base64.b64encode(data).decode(), SETTINGS) == data
    with pytest.raises(InvalidRequest):
        decode_data_url("data:image/png;base64,@@@", SETTINGS)
    with pytest.raises(InvalidRequest):
        decode_data_url("data:image/png,rawtext", SETTINGS)
    with pytest.raises(UnsupportedMediaType):
        decode_data_url("data:text/plain;base64,aGk=", SETTINGS)
    with pytest.raises(PayloadTooLarge):
        decode_data_url("data:image/png;base64," + "A" * 400000, SETTINGS)


def _request(*parts):
    return ChatRequest((Message("user", parts),), SamplingParams(8, 0.7, 0.8, 20, 1.5))


def test_load_request_images_decodes_every_image_part():
    data = encode(Image.new("RGB", (40, 40)), "PNG")
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    loaded = load_request_images(_request(ImagePart(data=data), ImagePart(url=url), TextPart("hi")), SETTINGS)
    images = loaded.image_parts()
    assert len(images) == 2 and all(p.image is not None and p.image.size == (40, 40) for p in images)
    assert loaded.messages[0].parts[2] == TextPart("hi")


def test_loaded_parts_keep_the_original_bytes_type_and_size_for_the_history():
    data = encode(Image.new("RGB", (300, 200)), "JPEG")
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    loaded = load_request_images(_request(ImagePart(data=data), ImagePart(url=url)), SETTINGS)
    for part in loaded.image_parts():
        assert (part.data, part.mime, part.width, part.height) == (data, "image/jpeg", 300, 200)
        assert part.image.size == (64, 43)  # what the model sees is scaled; the original is kept whole


@pytest.mark.parametrize("url", ["http://example.com/cat.png", "https://example.com/cat.png"])
def test_remote_urls_are_refused_unless_allowed(url):
    with pytest.raises(InvalidRequest, match="Remote image URLs"):
        load_request_images(_request(ImagePart(url=url)), SETTINGS)


def test_other_url_schemes_are_refused():
    with pytest.raises(InvalidRequest):
        load_request_images(_request(ImagePart(url="file:///etc/passwd")), SETTINGS)
