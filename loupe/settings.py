"""Loupe's settings: the only place that reads environment variables (and `.env`)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values
from limits import parse_many

DEFAULT_MODEL_ID = "Qwen/Qwen3-VL-2B-Instruct"
LINEAR_KERNELS = ("native", "packed", "onednn", "blas")  # implemented in loupe/runtime/kernels.py
RATE_LIMIT_STORAGE_SCHEMES = (
    "memory://",
    "redis://",
    "rediss://",
    "redis+unix://",
    "redis+sentinel://",
    "redis+cluster://",
)
MiB = 1024 * 1024
# Settings whose value must be above 0, and those that must not be below it.
POSITIVE = (
    "max_batch",
    "max_new_tokens",
    "max_new_tokens_limit",
    "max_context_tokens",
    "image_max_edge",
    "max_image_bytes",
    "max_images",
    "max_request_bytes",
    "threads",
    "port",
    "backend_timeout",
)
NOT_NEGATIVE = (
    "queue_size",
    "trusted_proxies",
    "torch_threads",
    "prefix_cache_tokens",
    "history_max_days",
    "history_max_records",
    "stream_resume_seconds",
    "stream_replay_seconds",
    "stream_replay_bytes",
    "request_timeout",  # 0 means no limit
    "shutdown_grace",
)
BACKENDS = ("local", "openai")  # app.py picks the loader: the model in this process, or an engine behind an API


def _setting(default, help: str, env: str | None = None, secret: bool = False):  # noqa: A002 - "help" reads best
    """A dataclass field that carries its documentation (and its variable name, if not the field's)."""
    # Secrets stay out of repr() so a logged Settings never shows an API key.
    return field(default=default, repr=not secret, metadata={"help": help, "env": env})


@dataclass(frozen=True)
class Settings:
    """Every knob of the service; each is an environment variable of the same name in capitals."""

    backend: str = _setting(
        "local",
        "What generates answers: `local` (the model in this process, on `DEVICE`) or `openai` (an "
        "OpenAI-compatible engine at `BACKEND_URL`, such as vLLM, SGLang, LMDeploy, llama.cpp's llama-server "
        "or Ollama: Loupe keeps its page, API, image intake, limits, history, keys and metrics, and sends "
        "each generation there; no model is loaded here and torch is never imported).",
    )
    backend_url: str = _setting(
        "",
        "With `BACKEND=openai`: the engine's OpenAI API base URL, the part before `/chat/completions`, "
        "e.g. `http://vllm:8000/v1`.",
    )
    backend_api_key: str = _setting(
        "", "With `BACKEND=openai`: the key sent to the engine as `Authorization: Bearer`; empty: none.", secret=True
    )
    backend_model: str = _setting(
        "",
        "With `BACKEND=openai`: the model name sent to the engine; empty: the first model its `/models` lists "
        "(an engine serving one model, as vLLM and llama-server do).",
    )
    backend_timeout: float = _setting(
        120.0,
        "With `BACKEND=openai`: seconds the engine may send nothing, before its first token (its own queue and "
        "prompt reading included) or between two; past it the request ends with 504 `upstream_timeout`.",
    )
    model_id: str = _setting(
        DEFAULT_MODEL_ID,
        "Hugging Face model id, or a local directory holding the model (config, weights, tokenizer, "
        "chat template, preprocessor config). Use a local directory on machines without network.",
    )
    dtype: str = _setting(
        "float32",
        "Weights and compute type: `float32` or `bfloat16`. On a GPU choose `bfloat16` (half the memory, faster); "
        "the start-up log says so when float32 is chosen there.",
    )
    device: str = _setting(
        "cpu",
        "Torch device the model runs on: `cpu`, or `cuda` (`cuda:N` for the Nth GPU) for an NVIDIA GPU, with a "
        "CUDA build of torch. Loupe's own kernels (`LINEAR_KERNEL`) are for CPUs; on a GPU torch's run it. "
        "Without a usable GPU the server starts, and `/health` says why it cannot load and what to do.",
    )
    linear_kernel: str = _setting(
        "native",
        "What computes the model's linear layers on a CPU: `native` (Loupe's own kernels, float32 and bfloat16, "
        "plus the text decoder's one-token attention and decode step, in the fastest variant the CPU runs: "
        "`avx512_bf16`, `avx512` or `avx2`; compiled with the system's C++ compiler on first start and cached; "
        "on a CPU with neither AVX2 nor AVX-512, or a machine without a compiler, `packed` instead, with SDPA and "
        "transformers' decode step, and the log says why), `packed` (oneDNN, on weights rearranged at load into "
        "its blocked layout; float32, and bfloat16 where the CPU supports it), `onednn` (oneDNN on the plain "
        "float32 weights) or `blas` (torch's default matrix multiply). See `python -m bench.kernel_rates` for "
        "what each reads per second on your machine.",
    )
    kernel_cache_dir: str = _setting(
        "~/.cache/loupe/kernels",
        "Where the compiled `native` kernels are kept (a small file per variant, source and torch version; "
        "the three newest of each), so only the first start on a machine compiles them; and the prepared "
        "weights (`PREPARED_WEIGHTS`).",
    )
    prepared_weights: bool = _setting(
        True,
        "With `native` kernels: keep the weights as the kernels want them (converted to `DTYPE`, rearranged "
        "into blocks) in `KERNEL_CACHE_DIR` after the first start, and map them from there on later starts, "
        "which then read and convert nothing. The file is as large as the weights in memory (8.5 GB for "
        "the 2B model in float32, 4.3 GB in bfloat16; the two newest are kept). `off`: prepare at every start.",
    )
    torch_threads: int = _setting(0, "Threads torch uses for one generation; 0 leaves torch's default (one per core).")
    max_new_tokens: int = _setting(512, "Tokens generated when a request does not say `max_tokens`.")
    max_new_tokens_limit: int = _setting(
        2048, "Ceiling for a request's `max_tokens`; larger values are refused with 400."
    )
    max_context_tokens: int = _setting(
        8192, "Ceiling for prompt tokens (text and image) plus `max_tokens` of one request."
    )
    image_max_edge: int = _setting(
        768,
        "Images are downscaled so their longest edge is at most this many pixels before the model "
        "sees them. The main speed lever on a CPU: fewer pixels, fewer image tokens. Also the ceiling "
        "of a request's own image budget (`detail`, `max_pixels`): `detail: high` is this size.",
    )
    image_low_pixels: int = _setting(
        65536,
        "Pixels an image has at most with `detail: low` (65536: 256x256, 64 image tokens; never more than "
        "`IMAGE_MAX_EDGE` allows); fewer tokens, a faster first word, less legible detail.",
    )
    image_detail: str = _setting(
        "high",
        "What `detail: auto` (and an image without `detail`) means: `high` (up to `IMAGE_MAX_EDGE`) or `low` "
        "(up to `IMAGE_LOW_PIXELS`).",
    )
    max_image_bytes: int = _setting(10 * MiB, "Largest accepted image file, in bytes (10 MiB).")
    max_images: int = _setting(8, "Most images in one request (across all its messages).")
    max_request_bytes: int = _setting(
        48 * MiB, "Largest accepted request body, in bytes; fits several base64 images in JSON."
    )
    prefix_cache_tokens: int = _setting(
        4096,
        "Tokens of earlier conversations whose model state is kept so follow-up questions skip "
        "re-reading them (the image above all); least recently used first out, also to make room for "
        "running generations: kept and running together stay within it. Each token costs 224 KiB in "
        "float32 (112 KiB in bfloat16) for Qwen3-VL-2B, in the memory of DEVICE. 0 turns the cache off. "
        "On a GPU with memory to spare, raise it with MAX_BATCH (about 700 tokens per running image chat).",
    )
    max_batch: int = _setting(
        4,
        "Generations decoded together: each step reads the weights once for all of them, so "
        "concurrent users share the cost. 1 generates one request at a time. On a GPU, 64 "
        "(with THREADS and QUEUE_SIZE raised to match). With `BACKEND=openai`: requests sent to the engine at "
        "once (it batches them itself); raise it to what the engine serves at once.",
    )
    queue_size: int = _setting(
        8,
        "Requests that may wait while the batch is full; past that a request gets 429 (server busy) with "
        "`Retry-After`.",
    )
    request_timeout: float = _setting(
        900.0,
        "Seconds a request may spend waiting in the queue and generating; past that it ends with "
        "504 `request_timeout` and frees its place. 0: no limit.",
    )
    stream_resume_seconds: float = _setting(
        30.0,
        "Seconds a streamed generation goes on after its client's connection drops, for the client to reconnect "
        "with `Last-Event-ID` and read the rest (see the README's *Resuming a stream*); if no client is reading it "
        "by then, the generation is stopped and recorded as cancelled. 0 turns resuming off: events carry no ids "
        "and a closed stream stops its generation at once.",
    )
    stream_replay_seconds: float = _setting(
        120.0,
        "Seconds a stream's events are kept after its generation ended, for a client that reconnects late to "
        "read the rest of the answer; after that, resuming it is 404 `stream_not_found`.",
    )
    stream_replay_bytes: int = _setting(
        16 * MiB,
        "Most bytes of stream events kept for reconnecting clients, all streams together (16 MiB; a token's "
        "event is about 200 bytes); past it the streams that ended first are forgotten first. Running streams "
        "are always kept whole: at most MAX_BATCH + QUEUE_SIZE of them, each at most MAX_NEW_TOKENS_LIMIT events.",
    )
    allow_remote_images: bool = _setting(
        False,
        "Fetch `http(s)` image URLs in JSON messages. Off: such URLs are refused with 400. "
        "Never fetched from loopback or private addresses.",
    )
    remote_image_timeout: float = _setting(10.0, "Seconds allowed to fetch one remote image.")
    host: str = _setting("0.0.0.0", "Address the server listens on.")
    port: int = _setting(8000, "Port the server listens on.")
    threads: int = _setting(
        16,
        "gunicorn worker threads: requests served at once (health, page, streams, the queue); "
        "keep it above MAX_BATCH + QUEUE_SIZE so /health answers while the batch and the queue are full.",
    )
    generation_timeout: int = _setting(
        900, "gunicorn worker timeout in seconds; longer than the slowest CPU generation."
    )
    log_level: str = _setting("INFO", "Logging level: DEBUG, INFO, WARNING or ERROR.")
    data_dir: str = _setting(
        "data",
        "Directory for the history: the SQLite database (by default) and `images/`; created on "
        "first start. Relative paths are from the working directory.",
    )
    database_url: str = _setting(
        "",
        "SQLAlchemy URL of the history database, e.g. `postgresql+psycopg://…` for several instances "
        "sharing one history; empty: SQLite at `DATA_DIR/history.db`.",
    )
    history: bool = _setting(True, "Record every inference and its images; `off` records nothing at all.")
    history_max_days: int = _setting(0, "Delete history records older than this many days; 0 keeps all.")
    history_max_records: int = _setting(0, "Keep at most this many history records, deleting the oldest; 0 keeps all.")
    api_key: str = _setting(
        "",
        "API keys, comma-separated; when set (or API_KEY_FILE is), `/v1/*` needs "
        "`Authorization: Bearer <key>`. Empty: no key needed.",
        secret=True,
    )
    api_key_file: str = _setting(
        "", "A file of API keys, one per line (blank lines and `#` comments ignored); read at start."
    )
    metrics_require_key: bool = _setting(
        False, "Whether `/metrics` also needs an API key (it is open by default, for scrapers)."
    )
    rate_limit: str = _setting(
        "30/minute",
        "Generation requests one client (IP address) may make, e.g. `30/minute` or "
        "`10/minute;500/day`; `off` for no limit. Past it: 429 with `Retry-After`.",
    )
    rate_limit_storage: str = _setting(
        "memory://",
        "Where rate-limit counters live: `memory://` (this process) or a Redis URI such as "
        "`redis://redis:6379/0`, shared by several instances.",
    )
    trusted_proxies: int = _setting(
        0,
        "Proxies in front of Loupe whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed: 1 behind one "
        "nginx (`deploy/nginx`), so rate limits and the history see each client's own address; 0 when clients "
        "connect directly, since a client can write those headers itself.",
    )
    cors_origins: str = _setting(
        "",
        "Origins allowed to call the API from a browser, comma-separated, or `*`. "
        "Empty: same origin only (no CORS headers).",
    )
    cors_allow_credentials: bool = _setting(
        False, "Let cross-origin pages send cookies and HTTP auth (never with `CORS_ORIGINS=*`)."
    )
    shutdown_grace: int = _setting(
        30,
        "Seconds running and queued generations get to finish after SIGTERM; then they end with a "
        "503 error and the process exits.",
    )
    log_format: str = _setting("text", "`text` (one readable line per event) or `json` (one JSON object per line).")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
        """Build settings from `.env` (if present) overlaid by the process environment."""
        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Settings:
        """Build settings from a name → text mapping, converting each value to its field's type."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            raw = values.get(env_name(f))
            if raw is not None and raw.strip() != "":
                kwargs[f.name] = _convert(f, raw.strip())
        settings = cls(**kwargs)
        settings.validate()
        return settings

    def replace(self, **changes) -> Settings:
        """A copy with some fields changed (tests and tools use this)."""
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Refuse settings that cannot work, with a message naming the variable."""
        self._check_choices()
        self._check_numbers()
        self._check_services()

    def _check_choices(self) -> None:
        """Settings that name one of a few things."""
        if self.backend not in BACKENDS:
            raise ValueError(f"BACKEND must be {' or '.join(BACKENDS)}, not {self.backend!r}")
        if self.backend == "openai" and not re.match(r"https?://[^/]", self.backend_url):
            raise ValueError("BACKEND=openai needs BACKEND_URL, the engine's API base such as http://vllm:8000/v1")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"DTYPE must be float32 or bfloat16, not {self.dtype!r}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"DEVICE must be cpu, cuda or cuda:N, not {self.device!r}")
        if self.linear_kernel not in LINEAR_KERNELS:
            raise ValueError(f"LINEAR_KERNEL must be {' or '.join(LINEAR_KERNELS)}, not {self.linear_kernel!r}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"LOG_FORMAT must be text or json, not {self.log_format!r}")
        if self.image_detail not in ("high", "low"):
            raise ValueError(f"IMAGE_DETAIL must be high or low, not {self.image_detail!r}")

    def _check_numbers(self) -> None:
        """Counts, sizes and times: their signs and the bounds they keep with each other."""
        for name in POSITIVE:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.upper()} must be positive")
        for name in NOT_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(f"{name.upper()} must not be negative")
        if self.max_new_tokens > self.max_new_tokens_limit:
            raise ValueError("MAX_NEW_TOKENS must not exceed MAX_NEW_TOKENS_LIMIT")
        if self.image_max_edge < 32:
            raise ValueError("IMAGE_MAX_EDGE must be at least 32 (the model's smallest image side)")
        if self.image_low_pixels < 1024:
            raise ValueError("IMAGE_LOW_PIXELS must be at least 1024 (32x32, the model's smallest image)")

    def _check_services(self) -> None:
        """Rate limits, CORS and key files: what the web layer hands to its libraries."""
        if self.rate_limit.lower() != "off":
            try:
                parse_many(self.rate_limit)
            except ValueError:
                raise ValueError(f"RATE_LIMIT={self.rate_limit!r} is not a limit like 30/minute, or off") from None
        if not self.rate_limit_storage.startswith(RATE_LIMIT_STORAGE_SCHEMES):
            raise ValueError("RATE_LIMIT_STORAGE must be memory:// or a redis:// URI")
        if self.cors_allow_credentials and "*" in self.cors_origin_list():
            raise ValueError("CORS_ALLOW_CREDENTIALS cannot be used with CORS_ORIGINS=*; list the origins")
        if self.api_key_file and not Path(self.api_key_file).is_file():
            raise ValueError(f"API_KEY_FILE={self.api_key_file!r} is not a readable file")
        if self.api_key_file and not self.api_keys():
            raise ValueError(f"API_KEY_FILE={self.api_key_file!r} holds no keys")

    @property
    def history_database_url(self) -> str:
        """Where the history lives: DATABASE_URL, or a SQLite file in DATA_DIR."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(Path(self.data_dir) / 'history.db').resolve()}"

    def api_keys(self) -> tuple[str, ...]:
        """Every accepted API key, from API_KEY and API_KEY_FILE; empty when the API is open."""
        keys = [k.strip() for k in self.api_key.split(",")]
        if self.api_key_file:
            lines = Path(self.api_key_file).read_text().splitlines()
            keys += [line.strip() for line in lines if not line.strip().startswith("#")]
        return tuple(k for k in keys if k)

    def cors_origin_list(self) -> list[str]:
        """CORS_ORIGINS as a list; empty means same-origin only."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


def env_name(f: dataclasses.Field) -> str:
    """The environment variable that sets a field."""
    return f.metadata.get("env") or f.name.upper()


def _convert(f: dataclasses.Field, raw: str):
    """Turn an environment string into the field's type, or say which variable is wrong."""
    kind: type = type(f.default)  # every setting has a default of its type
    try:
        if kind is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise ValueError(f"{env_name(f)}={raw!r} is not a valid {kind.__name__}") from None


def documented_settings() -> list[tuple[str, object, str]]:
    """(variable, default, help) for each setting, in declaration order; the README table mirrors it."""
    return [(env_name(f), f.default, f.metadata["help"]) for f in dataclasses.fields(Settings)]
