"""Noticing a client that hung up, on real sockets."""

import socket
import threading

from loupe.web.disconnects import POLL_SECONDS, cancel_on_disconnect, peer_closed


def test_a_peer_is_closed_only_once_it_hangs_up():
    server_side, client_side = socket.socketpair()
    with server_side:
        assert not peer_closed(server_side)
        client_side.sendall(b"more of a pipelined request")
        assert not peer_closed(server_side)  # readable, but with data: still there
        assert server_side.recv(100) == b"more of a pipelined request"  # the peek consumed nothing
        client_side.close()
        assert peer_closed(server_side)


def test_cancel_is_called_when_the_client_hangs_up_during_the_block():
    server_side, client_side = socket.socketpair()
    cancelled = threading.Event()
    with server_side:
        with cancel_on_disconnect(server_side, cancelled.set):
            client_side.close()
            assert cancelled.wait(10 * POLL_SECONDS)
        assert server_side.fileno() != -1  # the request's own socket is left to the server


def test_nothing_is_cancelled_when_the_answer_comes_first():
    server_side, client_side = socket.socketpair()
    cancelled = threading.Event()
    with server_side, client_side:
        with cancel_on_disconnect(server_side, cancelled.set):
            pass
        client_side.close()
        assert not cancelled.wait(3 * POLL_SECONDS)


def test_without_a_socket_nothing_is_watched():
    with cancel_on_disconnect(None, lambda: (_ for _ in ()).throw(AssertionError("called"))):
        pass
