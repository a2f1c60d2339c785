"""One way for tests to wait for something another thread or process does: poll until it holds, or fail."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | Callable[[], str] | None = None,
) -> T:
    """Call `condition` every `interval` s until it returns something truthy, and return that; fail the test
    if it has not after `timeout` s. `message` says what was awaited (a callable is asked only on failure)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message or getattr(condition, "__name__", repr(condition))
            pytest.fail(f"waited {timeout:g} s in vain for: {what}")
        time.sleep(interval)
