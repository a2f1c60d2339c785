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


def sse_events(text):
    """(id, data) of each event of an SSE body; comments and other fields skipped (data is one line here)."""
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if "data" in fields:
            events.append((fields.get("id"), fields["data"]))
    return events


def sse_chunks(response):
    datas = [data for _, data in sse_events(response.get_data(as_text=True))]
    assert datas[-1] == "[DONE]"
    return [json.loads(data) for data in datas[:-1]]


def stream_text(chunks):
    """The answer text of a list of chunks."""
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices"))
