"""Runs Debian's nginx with deploy/nginx's configuration on a free loopback port, unprivileged, in its own folder."""

from __future__ import annotations

import getpass
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.live_server import ROOT, free_port
from tests.support.waiting import wait_until

DEPLOY = ROOT / "deploy" / "nginx"
# The one line of each deploy file that names a place on the machine, and what the tests put there instead.
SITE_LISTEN = "listen 80;"
SITE_ACCESS_LOG = "access_log /var/log/nginx/access.log loupe;"
UPSTREAM_SERVER = re.compile(r"^(\s*)server 127\.0\.0\.1:8000( [^;]*)?;$", re.M)


def nginx_executable() -> str:
    """Debian's nginx (in /usr/sbin, which is not on every user's PATH); the test fails without it."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail("nginx is not installed (tests/test.sh installs Debian's nginx)")
    return found


def render(folder: Path, port: int, instances: list[str], upstream_extra: str = "") -> Path:
    """deploy/nginx's files in `folder`, as deployed, but for `instances` (host:port) and this port; the main file.

    Only the site's address and log and the upstream's servers differ from the deploy files; `upstream_extra`
    adds lines to the upstream block (a `hash … consistent;`). The main file, which a deployment takes from
    its distribution, gives nginx its own pid file, logs and temporary folders here.
    """
    (folder / "loupe").mkdir(parents=True, exist_ok=True)
    for source in (DEPLOY / "loupe").glob("*.conf"):
        shutil.copy(source, folder / "loupe" / source.name)
    upstream = (DEPLOY / "loupe" / "upstream.conf").read_text()
    match = UPSTREAM_SERVER.search(upstream)
    assert match is not None, "deploy/nginx/loupe/upstream.conf has no `server 127.0.0.1:8000 …;` line"
    indent, options = match.group(1), match.group(2) or ""
    servers = "\n".join(f"{indent}server {address}{options};" for address in instances)
    if upstream_extra:
        servers += "\n" + indent + upstream_extra
    (folder / "loupe" / "upstream.conf").write_text(upstream[: match.start()] + servers + upstream[match.end() :])
    site = (DEPLOY / "loupe.conf").read_text()
    assert site.count(SITE_LISTEN) == 1 and site.count(SITE_ACCESS_LOG) == 1, "deploy/nginx/loupe.conf changed shape"
    site = site.replace(SITE_LISTEN, f"listen 127.0.0.1:{port};")
    site = site.replace(SITE_ACCESS_LOG, f"access_log {folder / 'access.log'} loupe;")
    (folder / "site.conf").write_text(site)
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temporary = " ".join(f"{kind}_temp_path {folder / (kind + '_temp')};" for kind in kinds)
    main = folder / "nginx.conf"
    main.write_text(
        # `user` matters only when the tests run as root (CI's containers): workers then stay root, so
        # they can read this folder; otherwise nginx ignores the line.
        f"user {getpass.getuser()};\n"
        "worker_processes 1;\n"
        "daemon off;\n"
        f"pid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'} info;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n  {temporary}\n  include site.conf;\n}}\n"
    )
    return main


def check(main: Path) -> subprocess.CompletedProcess:
    """`nginx -t` on a rendered configuration."""
    folder = main.parent
    command = [nginx_executable(), "-t", "-p", f"{folder}/", "-e", str(folder / "error.log"), "-c", str(main)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


class Nginx:
    """nginx in front of `instances`, on a free loopback port: `Nginx(folder, ["127.0.0.1:8001"]).start()`."""

    def __init__(self, folder: Path, instances: list[str], upstream_extra: str = ""):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.main = render(folder, self.port, instances, upstream_extra)
        self.process: subprocess.Popen | None = None

    def start(self) -> Nginx:
        """Start nginx in the foreground of its own process and wait until its port accepts connections."""
        checked = check(self.main)
        assert checked.returncode == 0, checked.stderr
        folder = self.folder
        command = [nginx_executable(), "-p", f"{folder}/", "-e", str(folder / "error.log"), "-c", str(self.main)]
        process = self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def listening() -> bool:
            if process.poll() is not None:
                pytest.fail(f"nginx exited with {process.returncode}:\n{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_until(listening, timeout=10, interval=0.05, message="nginx to listen")
        return self

    def error_log(self) -> str:
        """What nginx wrote to its error log so far."""
        path = self.folder / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> str:
        """nginx's access lines so far (deploy/nginx's `loupe` format)."""
        path = self.folder / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop nginx (SIGTERM: its fast shutdown), then SIGKILL if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
