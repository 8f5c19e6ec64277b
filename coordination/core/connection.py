"""One wrapper around the Redis connection: pools shared per URL and event loop, clear errors."""

from __future__ import annotations

import asyncio
import os
import weakref
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import RedisUnavailable

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
CONNECT_TIMEOUT = 5.0
SOCKET_TIMEOUT = 10.0

# Errors that mean "Redis is not answering", as opposed to a command being refused.
UNAVAILABLE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aioredis.Redis]] = (
    weakref.WeakKeyDictionary()
)


class _HiredisPacking:
    """Pack commands with hiredis in C: a script call has ~30 arguments, and redis-py's
    pure-Python packer was the largest cost of a publish (measured in benchmarks/)."""

    def pack_command(self, *args):
        command = args[0]
        if isinstance(command, str) and " " in command:
            args = (*command.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # an argument type hiredis does not know: let redis-py say what is wrong
            return super().pack_command(*args)


class FastConnection(_HiredisPacking, Connection):
    pass


class FastSSLConnection(_HiredisPacking, SSLConnection):
    pass


def resolve_url(redis_url: str | None) -> str:
    return redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe for logs and pages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable Redis URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def shared_client(redis_url: str | None = None) -> aioredis.Redis:
    """A client whose pool is shared by everything on this event loop using the same URL."""
    url = resolve_url(redis_url)
    loop = asyncio.get_running_loop()
    per_loop = _clients.setdefault(loop, {})
    client = per_loop.get(url)
    if client is None:
        client = new_client(url)
        per_loop[url] = client
    return client


def new_client(redis_url: str | None = None) -> aioredis.Redis:
    """A client with its own pool (for tests and blocking readers that must not share)."""
    url = resolve_url(redis_url)
    scheme = url.split(":", 1)[0].lower()
    options = {}
    if scheme == "redis":
        options["connection_class"] = FastConnection
    elif scheme == "rediss":
        options["connection_class"] = FastSSLConnection
    try:
        return aioredis.Redis.from_url(
            url,
            **options,
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            health_check_interval=30,
        )
    except ValueError as exc:
        raise RedisUnavailable(redact_url(url), f"bad URL ({exc})") from None


def client_url(client: aioredis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    scheme = (
        "rediss" if client.connection_pool.connection_class.__name__.startswith("SSL") else "redis"
    )
    return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def unavailable(client: aioredis.Redis, exc: BaseException) -> RedisUnavailable:
    return RedisUnavailable(client_url(client), str(exc) or type(exc).__name__)


async def check_connection(redis_url: str | None = None, timeout: float = 3.0) -> None:
    """Raise ``RedisUnavailable`` (one clear line) unless Redis answers PING in time."""
    url = resolve_url(redis_url)
    client = new_client(url)
    try:
        await asyncio.wait_for(client.ping(), timeout)
    except (TimeoutError, *UNAVAILABLE_ERRORS) as exc:
        raise RedisUnavailable(redact_url(url), str(exc) or "no answer in time") from None
    finally:
        await client.aclose()
