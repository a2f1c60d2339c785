"""Remote image URLs: off by default; when on, public addresses only, bounded in size and time."""

import functools
import http.server
import ipaddress
import threading
import time

import pytest

from loupe.errors import InvalidRequest, PayloadTooLarge
from loupe.inference import ChatRequest, ImagePart, Message, SamplingParams
from loupe.protocol.images import load_request_images
from loupe.protocol.remote_images import fetch_image, is_public_address
from loupe.settings import Settings

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")  # served as-is, not decoded
SETTINGS = Settings.from_mapping(
    {"ALLOW_REMOTE_IMAGES": "true", "MAX_IMAGE_BYTES": "1000", "REMOTE_IMAGE_TIMEOUT": "0.5"}
)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow.png":
            time.sleep(2)  # not a poll: a server slower than REMOTE_IMAGE_TIMEOUT
        body = b"x" * 5000 if self.path == "/big.png" else PNG
        self.send_response(404 if self.path == "/missing.png" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def allow_any(address):
    return True


def test_public_address_policy():
    assert is_public_address(ipaddress.ip_address("93.184.216.34"))
    for private in [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "172.16.5.4",
        "169.254.169.254",
        "::1",
        "fc00::1",
        "0.0.0.0",
    ]:
        assert not is_public_address(ipaddress.ip_address(private)), private


def test_loopback_is_refused_by_default(image_server):
    with pytest.raises(InvalidRequest, match="loopback or private"):
        fetch_image(image_server + "/ok.png", SETTINGS)


def test_fetches_the_bytes_from_an_allowed_address(image_server):
    assert fetch_image(image_server + "/ok.png", SETTINGS, allow=allow_any) == PNG


@pytest.mark.parametrize(
    "path, error, words",
    [
        ("/big.png", PayloadTooLarge, "at most"),
        ("/missing.png", InvalidRequest, "HTTP 404"),
        ("/slow.png", InvalidRequest, "in time"),
    ],
)
def test_size_status_and_time_are_bounded(image_server, path, error, words):
    with pytest.raises(error, match=words):
        fetch_image(image_server + path, SETTINGS, allow=allow_any)


def test_unresolvable_host_and_bad_scheme():
    with pytest.raises(InvalidRequest, match="resolved"):
        fetch_image("http://no-such-host.invalid/x.png", SETTINGS)
    with pytest.raises(InvalidRequest):
        fetch_image("ftp://example.com/x.png", SETTINGS)


def test_requests_use_the_fetcher_when_remote_images_are_allowed(image_server):
    request = ChatRequest(
        (Message("user", (ImagePart(url=image_server + "/ok.png"),)),), SamplingParams(4, 0.7, 0.8, 20, 1.5)
    )
    fetch = functools.partial(fetch_image, allow=allow_any)
    with pytest.raises(InvalidRequest, match=r"could not be decoded|not an image"):
        load_request_images(request, SETTINGS, fetch)  # fetched, then refused by the decoder: 1 px stub
