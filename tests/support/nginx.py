"""Debian's nginx with deploy/nginx's configuration, on a free loopback port, in front of test instances."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.support.live_server import ROOT, free_port
from tests.support.waiting import wait_until

DEPLOY = ROOT / "deploy" / "nginx"
_SERVER_LINE = re.compile(r"^\s*#?\s*server \S+:\d+(?P<options>[^;]*);\s*$", re.MULTILINE)


def nginx_binary() -> str | None:
    """Debian's nginx (in /usr/sbin, often off a user's PATH), or None."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def upstream_for(instances: list[str]) -> str:
    """deploy/nginx/loupe/upstream.conf with its `server` lines replaced by one per instance (host:port)."""
    text = (DEPLOY / "loupe" / "upstream.conf").read_text()
    options = _SERVER_LINE.search(text)
    assert options is not None, "upstream.conf has no server line"
    servers = "".join(f"    server {address}{options['options']};\n" for address in instances)
    first = options.start()
    return _SERVER_LINE.sub("", text[:first]) + servers + "\n" + _SERVER_LINE.sub("", text[first:]).lstrip("\n")


class NginxServer:
    """nginx as loupe.conf sets it up (the same includes), listening on 127.0.0.1:<free port>, logs in a temp dir."""

    def __init__(self, instances: list[str]):
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (tests/test.sh installs Debian's nginx)")
        self.binary = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Not under pytest's tmp_path: its parents are private to the user, and nginx's workers may not be.
        self.prefix = Path(tempfile.mkdtemp(prefix="loupe-nginx-"))
        self.prefix.chmod(0o755)
        shutil.copytree(DEPLOY / "loupe", self.prefix / "loupe")
        (self.prefix / "loupe" / "upstream.conf").write_text(upstream_for(instances))
        self.process: subprocess.Popen | None = None

    def _config(self) -> str:
        """The main file: loupe.conf's includes and server block, with test paths, port and logs."""
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers that can read the temp dir
        temp_paths = "".join(
            f"    {kind}_temp_path {self.prefix / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return (
            f"{user}daemon off;\nworker_processes 1;\npid {self.prefix / 'nginx.pid'};\n"
            f"error_log {self.prefix / 'error.log'} info;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n{temp_paths}"
            "    include loupe/upstream.conf;\n    include loupe/http.conf;\n"
            f"    server {{\n        listen 127.0.0.1:{self.port};\n"
            f"        access_log {self.prefix / 'access.log'} loupe;\n"
            "        include loupe/proxy.conf;\n    }\n}\n"
        )

    def start(self) -> NginxServer:
        """Check the configuration, start nginx and wait until it accepts connections."""
        config = self.prefix / "nginx.conf"
        config.write_text(self._config())
        command = [self.binary, "-p", str(self.prefix), "-c", str(config), "-e", str(self.prefix / "error.log")]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the configuration:\n{check.stderr}")
        process = self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def accepts() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited early:\n{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_until(accepts, 30, interval=0.05, message="nginx to accept connections")
        return self

    def access_log(self) -> str:
        """nginx's access log so far (the `loupe` format: request id, conversation, upstream)."""
        path = self.prefix / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def error_log(self) -> str:
        """nginx's error log so far."""
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop nginx and delete its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)
