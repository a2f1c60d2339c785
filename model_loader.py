"""The model singleton: `load_backend(settings)` loads Qwen3-VL once per process and hands out that backend.

The composition root (app.py) calls it on the engine's loading thread, so torch is imported there and
never by the web layer. What loading does is in loupe/runtime/loader.py.
"""

from __future__ import annotations

import threading

from loupe.runtime.backend import QwenBackend
from loupe.runtime.loader import load
from loupe.settings import Settings

_LOCK = threading.Lock()
_BACKENDS: dict[tuple[str, str, str, str], QwenBackend] = {}


def load_backend(settings: Settings) -> QwenBackend:
    """The process's one backend for these settings (a second kernel is a second backend), loaded on first call."""
    key = (settings.model_id, settings.dtype, settings.device, settings.linear_kernel)
    with _LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = load(settings)
        return _BACKENDS[key]
