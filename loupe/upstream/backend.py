"""An OpenAI-compatible engine (vLLM, SGLang, LMDeploy, llama-server, Ollama) behind the engine's StreamingBackend."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Sequence

from loupe.errors import LoupeError, UpstreamError
from loupe.inference import Ending, Message, SamplingParams, Token
from loupe.settings import Settings
from loupe.upstream.client import UpstreamClient
from loupe.upstream.payload import ChunkReader, UpstreamPrompt, prompt_of, request_body

PROBE_SECONDS = 3.0  # /health's look at the engine: a load balancer's probe waits no longer
PROBE_KEPT_SECONDS = 2.0  # probes more often than this (several balancers) share one look


class UpstreamBackend:
    """Generation on an engine behind an OpenAI API: Loupe prepares and checks, the engine decodes and batches."""

    device = "upstream"  # the model runs on the engine at BACKEND_URL: its device and dtype are its own
    dtype = "unknown"
    cached_tokens = 0  # the engine's prefix cache is its own; each answer's usage says what it reused

    def __init__(self, settings: Settings, client: UpstreamClient | None = None):
        self.client = client or UpstreamClient(settings.backend_url, settings.backend_api_key, settings.backend_timeout)
        self.kernels = f"openai-compatible engine at {self.client.address}"
        self._configured_model = settings.backend_model
        # The model the engine serves under that name: BACKEND_MODEL, or (unset) the one it lists first.
        self.name = settings.backend_model or "unknown"
        self._named = bool(settings.backend_model)  # known without asking the engine
        self._lock = threading.Lock()
        self._probed: tuple[float, str | None] | None = None  # (when, problem) of the last look

    def prepare(self, messages: Sequence[Message], max_tokens: int) -> UpstreamPrompt:
        """The conversation as the engine's request, images as lossless data URLs (the engine counts tokens)."""
        if not self._named:
            self._look(PROBE_SECONDS)  # the name goes into the request: raises if the engine cannot say it
        return prompt_of(messages)

    def validate(self, sampling: SamplingParams) -> None:
        """Nothing to refuse here: a response format goes to the engine, which follows it or says why not."""

    def stream(
        self, prompt: UpstreamPrompt, sampling: SamplingParams, cancelled: Callable[[], bool]
    ) -> Generator[Token | Ending, None, None]:
        """The engine's answer piece by piece, then its Ending; closing this closes the request to the engine."""
        reader = ChunkReader()
        chunks = self.client.stream(request_body(prompt, sampling, self.name), cancelled)
        try:
            for chunk in chunks:
                if (token := reader.read(chunk)) is not None:
                    yield token
            if not cancelled():
                yield reader.ending()
        finally:
            chunks.close()  # cancels the request, if it is still going

    def problem(self) -> str | None:
        """Why the engine cannot answer now (unreachable, not serving BACKEND_MODEL), for /health; None if it can."""
        with self._lock:
            now = time.monotonic()
            if self._probed is not None and now - self._probed[0] < PROBE_KEPT_SECONDS:
                return self._probed[1]
            try:
                self._look(PROBE_SECONDS)
                found: str | None = None
            except LoupeError as error:
                found = error.message.replace("The engine behind this server", f"The engine at {self.client.address}")
            self._probed = (now, found)
            return found

    def _look(self, timeout: float) -> None:
        """Ask the engine for its models: learn the name to use, or raise UpstreamError saying what is wrong."""
        models = self.client.models(timeout)
        if self._configured_model:
            if self._configured_model not in models:
                raise UpstreamError(
                    f"The engine behind this server does not serve BACKEND_MODEL={self._configured_model!r}; "
                    f"it serves: {', '.join(models) or 'nothing'}."
                )
        elif not models:
            raise UpstreamError("The engine behind this server lists no models: is it still loading one?")
        else:
            self.name, self._named = models[0], True

    def close(self) -> None:
        """Close the connections to the engine."""
        self.client.close()
