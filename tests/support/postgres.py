"""Debian's PostgreSQL, started for a test on a free loopback port in a temporary directory, as an unprivileged user."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.live_server import free_port

USER = "loupe"
DATABASE = "loupe"


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin holding initdb (Debian keeps it off PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """A throwaway cluster: initdb, then pg_ctl on 127.0.0.1:<free port> with its socket in the temp dir.

    PostgreSQL refuses to run as root, so under root it runs as Debian's `postgres` user.
    """

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.root = Path(tempfile.mkdtemp(prefix="loupe-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "server.log"
        self._as = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self._as is not None:
            os.chown(self.root, self._as.pw_uid, self._as.pw_gid)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Loupe takes as DATABASE_URL."""
        return f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str) -> None:
        """Run one of PostgreSQL's programs as the cluster's owner; fail with its output."""
        kwargs = {"user": self._as.pw_uid, "group": self._as.pw_gid, "extra_groups": []} if self._as else {}
        result = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            **kwargs,  # type: ignore[arg-type]
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n{self.log()}")

    def start(self) -> PostgresServer:
        """Create the cluster (password auth only) and its database, start it and wait until it answers."""
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if self._as is not None:
            os.chown(password_file, self._as.pw_uid, self._as.pw_gid)
        auth = ("--auth-local=scram-sha-256", "--auth-host=scram-sha-256")
        self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={password_file}", *auth, "-E", "UTF8")
        password_file.unlink()
        options = " ".join(
            f"-c {name}={value}"
            for name, value in {
                "listen_addresses": "127.0.0.1",
                "port": self.port,
                "unix_socket_directories": self.root,
                "fsync": "off",  # a throwaway cluster: no need to survive a power cut
                "max_connections": 200,
            }.items()
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w", "-t", "60", "start")
        self.sql(f"CREATE DATABASE {DATABASE}", database="postgres")
        return self

    def sql(self, statement: str, database: str = DATABASE) -> list[tuple]:
        """Run one statement through psycopg (autocommit) and return its rows, if any."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=USER,
            password=self.password,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        ) as connection:
            cursor = connection.execute(statement)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def log(self) -> str:
        """What the server wrote to its log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop the server at once (fast shutdown) and delete the cluster."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
