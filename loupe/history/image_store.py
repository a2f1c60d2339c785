"""History images on disk, content-addressed: `images/ab/<sha256>`, each written atomically."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
TEMP_SUFFIX = ".tmp"


def sha256_of(data: bytes) -> str:
    """The content address of some bytes."""
    return hashlib.sha256(data).hexdigest()


def is_sha256(text: str) -> bool:
    """Whether `text` is a well-formed address (and so safe to turn into a path)."""
    return bool(_SHA256.match(text))


class ImageStore:
    """A directory of files named by the SHA-256 of their bytes, so a photo is kept once."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        """Where the image with this address lives; refuses anything that is not an address."""
        if not is_sha256(sha):
            raise ValueError(f"not a SHA-256 address: {sha!r}")
        return self.root / sha[:2] / sha

    def exists(self, sha: str) -> bool:
        """Whether the file for this address is on disk."""
        return self.path(sha).is_file()

    def put(self, data: bytes) -> str:
        """Write the bytes (once) and return their address; a reader never sees a partial file."""
        sha = sha256_of(data)
        target = self.path(sha)
        if target.is_file():
            return sha
        target.parent.mkdir(exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{sha[:8]}-", suffix=TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())  # the bytes are on disk before the name points at them
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return sha

    def read(self, sha: str) -> bytes:
        """The bytes of an image (FileNotFoundError if missing)."""
        return self.path(sha).read_bytes()

    def delete(self, sha: str) -> None:
        """Remove an image's file, if it is there."""
        self.path(sha).unlink(missing_ok=True)

    def addresses(self) -> Iterator[str]:
        """Every complete image on disk."""
        for path in self.root.glob("??/*"):
            if is_sha256(path.name):
                yield path.name

    def sweep(self, keep: set[str], older_than: float) -> int:
        """Delete leftovers older than `older_than` seconds: temp files, and images not in `keep`.

        The age guard keeps files another process may be about to record (a shared DATA_DIR).
        """
        cutoff = time.time() - older_than
        removed = 0
        for path in self.root.glob("??/*"):
            orphan = path.name.endswith(TEMP_SUFFIX) or (is_sha256(path.name) and path.name not in keep)
            try:
                if orphan and path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("history: swept %d orphan image files", removed)
        return removed
