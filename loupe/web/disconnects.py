"""Noticing that the client of a whole (non-streamed) answer has gone, so its generation stops.

A streamed answer notices a closed connection at its next write. A whole answer writes nothing
until the end, so without this a client that gives up (curl stopped with Ctrl-C, an SDK's timeout)
keeps the model busy, and everyone queued behind it waiting, for an answer nobody will read.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how late a disconnect is noticed: a fraction of one decode step on a CPU


def peer_closed(sock: socket.socket) -> bool:
    """Whether the client has closed its end: the socket reads as ended, without blocking or consuming."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # reset by the peer, or already closed here
        return True


@contextmanager
def cancel_on_disconnect(connection: socket.socket | None, cancel: Callable[[], None]) -> Iterator[None]:
    """While the block runs, call `cancel()` once the client behind `connection` has hung up.

    `connection` is the server's socket for the request (gunicorn's `gunicorn.socket`); None (the
    test client, the development server) watches nothing. The watch peeks at a duplicate of the raw
    socket, so a TLS connection's records are neither decrypted nor consumed.
    """
    if connection is None:
        yield
        return
    raw = socket.socket(fileno=socket.dup(connection.fileno()))
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_SECONDS):
            if peer_closed(raw):
                log.info("the client closed its connection before the answer was ready: stopping it")
                cancel()
                return

    watcher = threading.Thread(target=watch, name="disconnect-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        raw.close()
