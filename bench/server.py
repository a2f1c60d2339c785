"""Start the real server (gunicorn, from the project root) on a free port, watch its memory, stop it."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.client import health

log = logging.getLogger("bench.server")

ROOT = Path(__file__).resolve().parent.parent
LOAD_TIMEOUT = 900  # seconds to wait for /health ok


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_command() -> list[str]:
    """gunicorn from the same environment as this Python (as a module: also where it was installed without scripts)."""
    return [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]


class Server:
    """One gunicorn master (and its worker) serving the model under test."""

    def __init__(self, env: dict[str, str], log_path: Path, root: Path = ROOT):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(self.port)}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.load_s: float | None = None
        self.health: dict = {}

    def start(self) -> float:
        """Start gunicorn and wait until /health says ok; returns seconds from launch to ready."""
        log.info(
            "starting server on %s with %s",
            self.url,
            {k: v for k, v in self.env.items() if k in ("MODEL_ID", "DTYPE", "TORCH_THREADS", "IMAGE_MAX_EDGE")},
        )
        begin = time.perf_counter()
        with open(self.log_path, "ab") as sink:
            self.process = subprocess.Popen(
                gunicorn_command(),
                cwd=self.root,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while time.perf_counter() - begin < LOAD_TIMEOUT:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log_path}")
            status, body = health(self.url)
            if status == 200 and body.get("status") == "ok":
                self.load_s, self.health = time.perf_counter() - begin, body
                log.info("server ready in %.1f s (%s)", self.load_s, body.get("kernels"))
                return self.load_s
            if body.get("status") == "error":
                raise RuntimeError(f"server failed to load: {body.get('error')}")
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {LOAD_TIMEOUT} s; see {self.log_path}")

    def pids(self) -> tuple[int, list[int]]:
        """(master pid, worker pids): the workers are the master's children."""
        assert self.process is not None
        master = self.process.pid
        return master, children(master)

    def memory(self) -> dict:
        """Peak (VmHWM) and current (VmRSS) resident memory of master and workers, in bytes."""
        master, workers = self.pids()
        worker_peak = sum(proc_status_bytes(pid, "VmHWM") for pid in workers)
        master_peak = proc_status_bytes(master, "VmHWM")
        return {
            "worker_peak_rss_bytes": worker_peak,
            "master_peak_rss_bytes": master_peak,
            "peak_rss_bytes": worker_peak + master_peak,
            "worker_rss_bytes": sum(proc_status_bytes(pid, "VmRSS") for pid in workers),
            "master_rss_bytes": proc_status_bytes(master, "VmRSS"),
        }

    def stop(self) -> None:
        """SIGTERM the master (it stops its worker), then wait; SIGKILL the group if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log.warning("server did not stop in 60 s; killing its process group")
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def children(pid: int) -> list[int]:
    """Direct child processes of `pid` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(p) for p in task.read_text().split()]
    return found


def proc_status_bytes(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status, in bytes (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
