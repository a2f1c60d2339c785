"""Huge requests are refused by counting, before the tokenizer reads them: a 40 MiB body costs well under a second."""

import json
import random
import re
import time
import unicodedata

from loupe.runtime.prompts import clean_slice
from loupe.settings import MiB
from loupe.web.services import services
from tests.support.engines import wait_ready


def test_a_40_mib_body_of_text_is_refused_before_tokenising(engines, settings, backend):
    app = engines.app(settings.replace(max_request_bytes=48 * MiB))  # Loupe's default, larger than the body
    wait_ready(services(app).engine)
    text = "The cat sat on the house, über dem Haus: 二十 🙂. " * 800_000
    body = json.dumps({"messages": [{"role": "user", "content": text}]}, ensure_ascii=False).encode()
    assert 40 * MiB <= len(body) <= 48 * MiB
    started = time.perf_counter()
    response = app.test_client().post("/v1/chat/completions", data=body, content_type="application/json")
    seconds = time.perf_counter() - started
    assert response.status_code == 400
    assert "exceeds the context limit" in response.get_json()["error"]["message"]
    # Tokenising this text takes minutes, even with the tiny model's tokenizer; the refusal parses the JSON,
    # normalises the text and counts its bytes. The bound is generous for a shared machine, far under minutes.
    assert seconds < 5, f"refusing took {seconds:.1f} s"


def test_more_messages_or_parts_than_the_context_holds_are_refused(client, settings):
    limit = settings.max_context_tokens
    messages = [{"role": "user", "content": ""}] * (limit + 1)
    response = client.post("/v1/chat/completions", json={"messages": messages})
    assert response.status_code == 400 and "messages per request" in response.get_json()["error"]["message"]
    parts = [{"type": "text", "text": ""}] * (limit + 1)
    response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}]})
    assert response.status_code == 400 and "content parts per request" in response.get_json()["error"]["message"]


def test_the_text_bound_never_exceeds_the_tokens_the_tokenizer_makes(backend):
    """The check refuses only what cannot fit: no text is fewer tokens than its NFC bytes ÷ the longest token."""
    prompts = backend.prompts
    tokenizer = prompts.tokenizer
    longest = max(tokenizer.get_vocab(), key=len)
    rng = random.Random(1)
    alphabet = ["a", "e", "\u0301", "ᄀ", "ᅡ", "ᆨ", "  ", "\n", "🙂", "二", "Å", "Ω", "0", "!", tokenizer.decode([0])]
    samples = [tokenizer.convert_tokens_to_string([longest]) * 50, " " * 5000]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 400))) for _ in range(300)]
    for text in samples:
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        least = -(-len(unicodedata.normalize("NFC", text).encode()) // prompts.max_token_bytes)
        assert least <= tokens, (text, least, tokens)


def test_text_within_the_size_bound_is_refused_by_a_slice_of_it(client, backend, settings):
    """Text small enough in bytes to pass the first step, far too many tokens: a tokenised slice says so."""
    room = settings.max_context_tokens - settings.max_new_tokens
    text = ("The cat sat on the house. " * 10_000)[: room * backend.prompts.max_token_bytes]
    response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": text}]})
    assert response.status_code == 400
    least = int(
        re.search(r"at least ([\d,]+) tokens", response.get_json()["error"]["message"]).group(1).replace(",", "")
    )
    assert least > room  # the slice's count, not the bytes' bound (which is at most `room` here)


def test_a_slice_is_tokenised_as_the_same_stretch_of_the_whole_prompt(backend):
    """Cut between spaces that follow other characters, a slice's tokens are exactly the whole prompt's there."""
    tokenizer = backend.prompts.tokenizer
    rng = random.Random(2)
    words = ["cat", " ", "  ", "\n", "\n\n", "über", "二十", "🙂", "'s", "123", "!!", "e\u0301", "\t", "a.b", "---"]
    checked = 0
    for _ in range(300):
        text = "".join(rng.choice(words) for _ in range(rng.randint(1, 120)))
        where = clean_slice(text, rng.randint(1, len(text) + 1))
        if where is None:
            continue
        for context in ("", "\n", "x", " "):
            whole = tokenizer(context + text + context, add_special_tokens=False, return_offsets_mapping=True)
            start, end = where[0] + len(context), where[1] + len(context)
            spans = zip(whole["input_ids"], whole["offset_mapping"], strict=True)
            inside = [token for token, (a, b) in spans if start <= a and b <= end]
            alone = tokenizer(text[where[0] : where[1]], add_special_tokens=False)["input_ids"]
            assert alone == inside, repr(text)
            checked += 1
    assert checked > 500
