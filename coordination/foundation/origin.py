"""Websocket origin check: a handshake is accepted only from a page of this very origin (scheme,
host and port) or from an origin listed in ``CSRF_TRUSTED_ORIGINS``.

Browsers do not apply the same-origin policy to websockets, and the session cookie rides along,
so any page a supervisor opens could otherwise read the live feeds in their name. Channels'
``AllowedHostsOriginValidator`` compares the host only: ``http://host:9999`` (another service on
the same machine, perhaps an agent's) or ``http://host`` against an ``https://host`` dashboard
passed. Here the origin must equal the request's own: the scheme the server saw (``wss`` when a
configured proxy says so through X-Forwarded-Proto, which uvicorn applies only for
``FORWARDED_ALLOW_IPS``), the Host header (which must be one of ``ALLOWED_HOSTS``, as Django
requires of every HTTP request) and its port. A missing Origin (browsers always send one on
websockets), ``null`` (sandboxed frames, file: pages) or a malformed one is refused.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

DEFAULT_PORTS = {"http": 80, "https": 443}
WEBSOCKET_TO_HTTP = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int


def parse_origin(value: str) -> Origin | None:
    """``scheme://host[:port]`` with nothing else, or None."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.username or parts.password:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return Origin(scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme])


def _header(scope: dict, name: bytes) -> str | None:
    """The header's value, or None when it is missing or sent more than once."""
    values = [value for key, value in scope.get("headers", ()) if key.lower() == name]
    if len(values) != 1:
        return None
    return values[0].decode("latin-1")


def _allowed_hosts() -> list[str]:
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:  # what Django's get_host() allows in DEBUG
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts


def request_origin(scope: dict) -> Origin | None:
    """The origin of the page the handshake must come from: the scheme seen by the server and
    the Host header, which must be an allowed host."""
    scheme = WEBSOCKET_TO_HTTP.get(str(scope.get("scheme", "ws")).lower())
    host_header = _header(scope, b"host")
    if scheme is None or not host_header:
        return None
    domain, port = split_domain_port(host_header.lower())
    if not domain or not validate_host(domain, _allowed_hosts()):
        return None
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            return None
        number = int(port)
    else:
        number = DEFAULT_PORTS[scheme]
    return Origin(scheme, domain.strip("[]"), number)


def _trusted(origin: Origin, raw_origin: str) -> bool:
    """Listed in CSRF_TRUSTED_ORIGINS: exactly, or under a ``scheme://*.domain`` entry (the
    forms Django's CSRF check accepts)."""
    for entry in getattr(settings, "CSRF_TRUSTED_ORIGINS", ()):
        if "*" in entry:
            scheme, _, netloc = entry.partition("://")
            if scheme.lower() == origin.scheme and netloc.startswith("*"):
                if is_same_domain(urlsplit(raw_origin.strip()).netloc.lower(), netloc[1:].lower()):
                    return True
        elif parse_origin(entry) == origin:
            return True
    return False


def origin_allowed(scope: dict) -> bool:
    raw = _header(scope, b"origin")
    if raw is None:
        return False
    origin = parse_origin(raw)
    if origin is None:  # "null", garbage, or a URL with a path
        return False
    if origin == request_origin(scope):
        return True
    return request_origin(scope) is not None and _trusted(origin, raw)


class SameOriginValidator:
    """ASGI middleware for websockets: refuses (HTTP 403 at the handshake) any origin but the
    request's own or a CSRF-trusted one."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
