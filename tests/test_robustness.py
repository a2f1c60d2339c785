"""Nothing a client sends may produce a 5xx: arbitrary JSON bodies and form fields, on the tiny model."""

import io
import json

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

scalars = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=20)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "presence_penalty",
    "repetition_penalty",
    "stream",
    "stream_options",
    "n",
    "ignore_eos",
    "model",
]
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "other"])}, optional={"text": values, "image_url": values}
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", 3])},
        optional={"content": st.text(max_size=30) | st.lists(parts, max_size=3) | values},
    ),
    max_size=3,
)
bodies = st.fixed_dictionaries({}, optional=dict.fromkeys(FIELDS, values) | {"messages": messages}) | values
EXAMPLES = hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@EXAMPLES
@given(body=bodies)
def test_any_json_body_gets_an_answer_or_a_4xx(client, body):
    body = body | {"max_tokens": 2} if isinstance(body, dict) and "max_tokens" not in body else body
    response = client.post("/v1/chat/completions", data=json.dumps(body), content_type="application/json")
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert set(response.get_json()["error"]) == {"message", "type", "param", "code"}


@EXAMPLES
@given(
    form=st.dictionaries(
        st.sampled_from(
            [
                "prompt",
                "system",
                "messages",
                "stream",
                "temperature",
                "max_tokens",
                "top_k",
                "stop",
                "seed",
                "include_usage",
            ]
        ),
        st.text(max_size=40),
        max_size=6,
    ),
    image=st.none() | st.binary(max_size=64),
)
def test_any_form_gets_an_answer_or_a_4xx(client, form, image):
    data = dict(form, max_tokens="2") if "max_tokens" not in form else dict(form)
    if image is not None:
        data["image"] = (io.BytesIO(image), "upload.png")
    response = client.post("/v1/chat/completions", data=data, content_type="multipart/form-data")
    assert response.status_code < 500, response.get_data(as_text=True)
