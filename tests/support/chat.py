"""Requests and their parts as the API tests send them: images, data URLs, chat bodies, stream chunks."""

import base64
import io
import json

from PIL import Image


def png(width=64, height=48, fmt="PNG"):
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 40).convert("RGB").save(buffer, fmt)
    return buffer.getvalue()


def data_url(data, mime="image/png"):
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def ask(text="Hi", image=None, **fields):
    content = [{"type": "text", "text": text}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image}})
    return {"model": "anything", "messages": [{"role": "user", "content": content}], **fields}


def sse_chunks(response):
    lines = [line for line in response.get_data(as_text=True).split("\n\n") if line and not line.startswith(":")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
