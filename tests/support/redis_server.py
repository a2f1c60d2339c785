"""Debian's redis-server, started for a test on a free loopback port, nothing saved."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.support.live_server import free_port
from tests.support.waiting import wait_until


@contextmanager
def running_redis(directory: Path) -> Iterator[str]:
    """A redis-server of the caller's own, working in `directory`: its URI while the block runs."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not installed (tests/test.sh installs Debian's redis-server)")
    port = free_port()
    options = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    server = subprocess.Popen([executable, *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for_redis(uri, server)
        yield uri
    finally:
        server.terminate()
        server.wait(10)


def _wait_for_redis(uri: str, server: subprocess.Popen) -> None:
    """Return once the server answers PING; fail if it exits or stays silent for 10 s."""
    client = redis.Redis.from_url(uri, socket_timeout=1)

    def answers() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"redis-server exited with {server.returncode}")
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    wait_until(answers, timeout=10, interval=0.05, message="redis-server to answer PING")
