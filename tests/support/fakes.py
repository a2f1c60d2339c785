"""A scripted backend for the engine, the web layer and the page: queue states held still, no model needed."""

import threading
from dataclasses import dataclass, replace

from loupe.inference import ChatRequest, Message, SamplingParams, TextPart, Token


@dataclass
class ScriptedPrompt:
    prompt_tokens: int = 5
    image_tokens: int = 0


class ScriptedBackend:
    """Gives each sequence the given texts as tokens; every sample waits for `gate` when one is set,
    and every prefill for `prefill_gate`.

    The gate is held shut by the test to keep a generation running (or its answer unwritten) for as
    long as it needs; a test opens it before it ends, and the 30 s wait is only a backstop.
    """

    device, dtype, kernels, cached_tokens = "cpu", "float32", "scripted", 0

    def __init__(
        self, texts=(), eos_at_end=True, gate=None, fail_after=None, name="scripted", prompt=None, prefill_gate=None
    ):
        self.texts, self.eos_at_end, self.gate, self.fail_after = texts, eos_at_end, gate, fail_after
        self.prefill_gate = prefill_gate
        self.name = name
        self.prompt = prompt if prompt is not None else ScriptedPrompt()
        self.tokens_made = 0
        self.started = threading.Event()
        self.batch = []
        self.widest_batch = 0
        self.calls = []

    def prepare(self, messages, max_tokens):
        return replace(self.prompt)

    def validate(self, sampling):
        """Every format passes: the scripted texts are the answer, JSON or not, as the test writes them."""

    def start(self, prompt, sampling):
        self.calls.append("start")
        self.started.set()
        if self.prefill_gate is not None:
            self.prefill_gate.wait(30)
        sequence = {"step": 0}
        self.batch.append(sequence)
        self.widest_batch = max(self.widest_batch, len(self.batch))
        return sequence

    def sample(self, sequence):
        self.calls.append("sample")
        if self.gate is not None:
            self.gate.wait(30)
        step = sequence["step"]
        if self.fail_after is not None and step >= self.fail_after:
            raise RuntimeError("backend broke")
        self.tokens_made += 1
        if step < len(self.texts):
            return Token(step, self.texts[step])
        return Token(99, "", eos=self.eos_at_end)

    def advance(self):
        for sequence in self.batch:
            sequence["step"] += 1

    def finish(self, sequence):
        self.batch.remove(sequence)


def chat(max_tokens=10, stop=()):
    """A one-message chat request (greedy) for the engine."""
    sampling = SamplingParams(max_tokens, 0.0, 1.0, 0, 0.0, stop=stop)
    return ChatRequest((Message("user", (TextPart("hi"),)),), sampling)
