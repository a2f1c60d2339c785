"""Runs the real gunicorn server on a free loopback port for tests that talk HTTP to it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
# The native kernel, compiled once per machine for the whole suite (its file name hashes its source).
KERNEL_CACHE_DIR = Path(tempfile.gettempdir()) / "loupe-test-kernels"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """`gunicorn -c gunicorn.conf.py 'app:create_app()'` as a user would start it, with test settings."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # History goes next to the log unless the test says where: never into the repository, nor
        # into a database the developer's environment happens to name. No rate limit unless a test
        # sets one: all of a module's requests come from 127.0.0.1.
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DATA_DIR": str(log_path.parent / "data"),
            "DATABASE_URL": "",
            "HISTORY": "on",
            "RATE_LIMIT": "off",
            "KERNEL_CACHE_DIR": str(KERNEL_CACHE_DIR),
            **env,
        }
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, ready_status: str = "ok", timeout: float = 120) -> LiveServer:
        """Start gunicorn and wait until /health reports `ready_status`."""
        log = self.log_path.open("wb")
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
        process = self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited early:\n{self.log()}")
            return self.health().get("status") == ready_status

        try:
            wait_until(ready, timeout, interval=0.2, message=lambda: f"the server to be {ready_status}:\n{self.log()}")
        except BaseException:  # pytest.fail raises a BaseException: stop the server whatever went wrong
            self.stop()
            raise
        return self

    def health(self) -> dict:
        """The /health body, or {} while the server does not answer."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            return json.load(error)
        except OSError:
            return {}

    def log(self) -> str:
        """What the server wrote so far."""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the workers and the master at once, as a crash or the OOM killer would."""
        if self.process is None or self.process.poll() is not None:
            return
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in children:  # the worker first: it is the one writing the history
            os.kill(int(child), signal.SIGKILL)
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
