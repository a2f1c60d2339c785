"""Fetching `http(s)` image URLs, when allowed: public addresses only, bounded in size and time."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from loupe.errors import InvalidRequest, PayloadTooLarge
from loupe.settings import Settings

AddressPolicy = Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for globally routable addresses; loopback, private, link-local and reserved are not."""
    return address.is_global and not address.is_multicast


def fetch_image(url: str, settings: Settings, allow: AddressPolicy = is_public_address) -> bytes:
    """GET an image URL; the connection goes to the very address that was checked (no re-resolving)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("The image URL must be http(s) with a host name.", param="image_url")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = _resolve(parts.hostname, port, allow)
    connection = _connection(parts.scheme, parts.hostname, address, port, settings.remote_image_timeout)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        connection.request("GET", path, headers={"Host": parts.netloc, "Accept": "image/*"})
        response = connection.getresponse()
        if response.status != 200:
            raise InvalidRequest(f"The image URL answered HTTP {response.status}.", param="image_url")
        data = response.read(settings.max_image_bytes + 1)
    except (OSError, http.client.HTTPException):
        raise InvalidRequest("The image URL could not be fetched in time.", param="image_url") from None
    finally:
        connection.close()
    if len(data) > settings.max_image_bytes:
        raise PayloadTooLarge(f"An image may be at most {settings.max_image_bytes:,} bytes.", param="image_url")
    return data


def _resolve(host: str, port: int, allow: AddressPolicy) -> str:
    """Resolve the host and refuse it unless every address it has is allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidRequest("The image URL's host could not be resolved.", param="image_url") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses or not all(allow(a) for a in addresses):
        raise InvalidRequest("Image URLs on loopback or private addresses are refused.", param="image_url")
    return str(addresses[0])


def _connection(scheme: str, host: str, address: str, port: int, timeout: float) -> http.client.HTTPConnection:
    """An HTTP(S) connection pinned to `address`, verifying TLS against the URL's host name."""
    if scheme == "http":
        return http.client.HTTPConnection(address, port, timeout=timeout)
    context = ssl.create_default_context()

    class _PinnedHTTPS(http.client.HTTPSConnection):
        def connect(self) -> None:
            sock = socket.create_connection((address, port), timeout)
            self.sock = context.wrap_socket(sock, server_hostname=host)

    return _PinnedHTTPS(host, port, timeout=timeout, context=context)
