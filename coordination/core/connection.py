"""One wrapper around the Redis connection: pools shared per URL and event loop, clear errors."""

from __future__ import annotations

import asyncio
import os
import re
import time
import weakref
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote

import hiredis
import redis.asyncio as aioredis
import redis.asyncio.cluster
import redis.asyncio.sentinel  # noqa: F401 (aioredis.sentinel)
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import ClusterDownError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import RedisUnavailable

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
CONNECT_TIMEOUT = 5.0
SOCKET_TIMEOUT = 10.0

# Errors that mean "Redis is not answering", as opposed to a command being refused. A Redis
# Cluster that lost a node or is failing over says so with its own errors (issue 17).
UNAVAILABLE_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    RedisClusterException,
    ClusterDownError,
    TryAgainError,
)


def is_unavailable_reply(exc: BaseException) -> bool:
    """A refusal that means the server cannot serve now (a blocked read ended by a failover:
    ``UNBLOCKED``; a replica or a loading server), not that the command was wrong."""
    message = str(exc)
    return message.startswith(("UNBLOCKED", "LOADING", "MASTERDOWN", "READONLY"))


_client_urls: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()

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


class _Watched:
    """Stalled-server detection without a timer per command.

    redis-py enforces ``socket_timeout`` with an ``asyncio.wait_for`` task per send and an
    ``asyncio.timeout`` per read: ~21 us of a ~95 us publish on Python 3.11 (profiled with
    py-spy, issue 18). Instead, a connection notes when it starts to wait on the server (each
    send and each read) and when the answer came; one watchdog per event loop looks once a
    second and aborts the transport of a connection that has waited longer than
    ``SOCKET_TIMEOUT``. The waiting read then fails with ``TimeoutError`` as it did before."""

    _waiting_since: float | None = None
    _stalled_after: float | None = None

    async def connect(self):
        await super().connect()
        _watchdog().watch(self)

    async def send_packed_command(self, command, check_health=True):
        self._waiting_since = _monotonic()
        try:
            return await super().send_packed_command(command, check_health)
        finally:
            self._waiting_since = None

    async def read_response(self, *args, **kwargs):
        self._waiting_since = _monotonic()
        try:
            return await super().read_response(*args, **kwargs)
        except RedisConnectionError:
            stalled = self.stall_error()
            if stalled is not None:
                raise stalled from None
            raise
        finally:
            self._waiting_since = None

    def stall_error(self) -> RedisTimeoutError | None:
        """After a lost connection: the timeout to raise instead if the watchdog cut it."""
        stalled, self._stalled_after = self._stalled_after, None
        if stalled is None:
            return None
        return RedisTimeoutError(f"no answer from {self._host_error()} within {stalled:g} s")

    def _abort(self, waited: float) -> None:
        writer = self._writer
        if writer is not None:
            self._stalled_after = waited
            writer.transport.abort()


_monotonic = time.monotonic


class _Watchdog:
    """Aborts connections of one event loop that wait on the server for too long."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.connections: weakref.WeakSet[_Watched] = weakref.WeakSet()
        self.handle: asyncio.TimerHandle | None = None

    def watch(self, connection: _Watched) -> None:
        self.connections.add(connection)
        if self.handle is None:
            self.handle = self.loop.call_later(self.interval(), self.tick)

    @staticmethod
    def interval() -> float:
        return max(0.05, min(1.0, SOCKET_TIMEOUT / 4))

    def tick(self) -> None:
        self.handle = None
        limit = SOCKET_TIMEOUT  # read each time: tests (and embedders) may lower it
        now = _monotonic()
        for connection in list(self.connections):
            since = connection._waiting_since
            if since is not None and now - since > limit:
                connection._abort(limit)
        if self.connections and not self.loop.is_closed():
            self.handle = self.loop.call_later(self.interval(), self.tick)


_watchdogs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog] = (
    weakref.WeakKeyDictionary()
)


def _watchdog() -> _Watchdog:
    loop = asyncio.get_running_loop()
    dog = _watchdogs.get(loop)
    if dog is None:
        dog = _watchdogs[loop] = _Watchdog(loop)
    return dog


class FastConnection(_Watched, _HiredisPacking, Connection):
    pass


class FastSSLConnection(_Watched, _HiredisPacking, SSLConnection):
    pass


_USERINFO = re.compile(r"^([a-z+]+://)([^@/]*?):([^@/]*)@", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe for logs and pages."""
    return _USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:***@", url, count=1)


def resolve_url(redis_url: str | None) -> str:
    return redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names: one server, a Cluster, or a Sentinel-watched primary.

    - ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS, ``unix://`` sockets):
      one server; a Cluster when ``REDIS_CLUSTER=1`` is set.
    - ``redis+cluster://[user:password@]host:port[,host:port...]``: a Cluster, found from
      any of the listed nodes.
    - ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``: the primary
      of ``service`` as the Sentinels report it, followed through failovers.
    """

    kind: str  # "single", "cluster" or "sentinel"
    url: str  # for "single": the URL as given; otherwise redis[s]:// to the first node
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @property
    def node_urls(self) -> list[str]:
        """redis[s]:// URLs of the listed nodes (Cluster nodes or Sentinels)."""
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return [f"{scheme}://{auth}{host}:{port}" for host, port in self.nodes]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def parse_url(redis_url: str | None) -> RedisTarget:
    """Say what a Redis URL names; a malformed URL raises ``RedisUnavailable`` naming it."""
    url = resolve_url(redis_url)
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise RedisUnavailable(redact_url(url), "bad URL (expected redis://host:port)")
    if scheme in ("redis", "rediss", "unix"):
        if scheme != "unix" and _env_flag("REDIS_CLUSTER"):
            return parse_url(url.replace(f"{scheme}://", f"{scheme}+cluster://", 1))
        return RedisTarget("single", url, tls=scheme == "rediss")
    base, _, kind = scheme.partition("+")
    if base not in ("redis", "rediss") or kind not in ("cluster", "sentinel"):
        raise RedisUnavailable(
            redact_url(url),
            f"unknown scheme {scheme!r} (use redis, rediss, unix, redis+cluster or redis+sentinel)",
        )
    netloc, _, path = rest.partition("/")
    path = path.split("?", 1)[0]
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        if has_password:
            username, password = unquote(user) or None, unquote(secret)
        else:
            password = unquote(user)
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise RedisUnavailable(
                redact_url(url), f"bad node {item.strip()!r} (expected host:port)"
            )
        nodes.append((host.strip("[]"), int(port)))
    parts = [p for p in path.split("/") if p]
    service, db = "", 0
    if kind == "sentinel":
        if not parts:
            raise RedisUnavailable(
                redact_url(url), "a redis+sentinel:// URL must name the service: .../mymaster"
            )
        service = unquote(parts[0])
        if len(parts) > 1:
            if not parts[1].isdigit():
                raise RedisUnavailable(redact_url(url), f"bad database number {parts[1]!r}")
            db = int(parts[1])
    elif parts and parts != ["0"]:
        raise RedisUnavailable(redact_url(url), "a Redis Cluster has only database 0")
    target = RedisTarget(
        kind, "", tuple(nodes), service, db, username, password, tls=base == "rediss"
    )
    return replace(target, url=target.node_urls[0])


def is_cluster(client: object) -> bool:
    return isinstance(client, aioredis.RedisCluster)


def shared_client(redis_url: str | None = None) -> aioredis.Redis:
    """A client whose pool is shared by everything on this event loop using the same URL."""
    url = resolve_url(redis_url)
    loop = asyncio.get_running_loop()
    per_loop = _clients.get(loop)
    if per_loop is None:
        per_loop = _clients[loop] = {}
        _close_with_loop(loop)
    client = per_loop.get(url)
    if client is None:
        client = new_client(url)
        per_loop[url] = client
    return client


def _close_with_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close this loop's shared clients when the loop closes (as channels_redis does with its
    pools): a pool belongs to its loop, so nobody else may close it, and ``asyncio.run`` or a
    test's loop ends without leaving sockets open or "Unclosed connection" warnings."""
    original_close = loop.close

    def close() -> None:
        clients = list(_clients.pop(loop, {}).values())
        if clients and not loop.is_closed() and not loop.is_running():
            loop.run_until_complete(_close_all(clients))
        original_close()

    loop.close = close  # type: ignore[method-assign]


async def _close_all(clients: list[aioredis.Redis]) -> None:
    await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)


# When each shared client was last rebuilt (per loop and URL), so a failing cluster is not
# hammered with new clients: at most one per second.
_rebuilt_at: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, float]] = (
    weakref.WeakKeyDictionary()
)
REBUILD_INTERVAL = 1.0


def heal_shared_client(redis_url: str | None, broken: aioredis.Redis) -> aioredis.Redis:
    """Replace this loop's shared client for ``redis_url`` if it is still ``broken`` and was
    not rebuilt within ``REBUILD_INTERVAL``; return the client to use now.

    Only Cluster and Sentinel clients are rebuilt: redis-py's cluster client drops startup
    nodes on errors and can be left with none after a failover (issue 17), while a single
    server's pool reconnects by itself. The old client is closed in the background (its
    blocking readers finish with an error and take the new one on their retry)."""
    url = resolve_url(redis_url)
    loop = asyncio.get_running_loop()
    per_loop = _clients.get(loop) or {}
    current = per_loop.get(url)
    if current is not broken or parse_url(url).kind == "single":
        return current if current is not None else shared_client(url)
    times = _rebuilt_at.setdefault(loop, {})
    now = time.monotonic()
    if now - times.get(url, 0.0) < REBUILD_INTERVAL:
        return current
    times[url] = now
    fresh = per_loop[url] = new_client(url)
    task = loop.create_task(_close_later(broken))
    _closing.add(task)
    task.add_done_callback(_closing.discard)
    return fresh


_closing: set[asyncio.Task] = set()


async def _close_later(client: aioredis.Redis) -> None:
    try:
        await asyncio.sleep(MAX_CLOSE_DELAY)
    finally:  # also when the loop ends first (asyncio.run cancels the task): no socket left open
        try:
            await client.aclose()
        except Exception:  # noqa: BLE001 - a broken client may fail to close; dropped anyway
            pass


# Blocking reads of the old client end within their BLOCK time (5 s at most) before it closes.
MAX_CLOSE_DELAY = 6.0


# Anyone holding REDIS_URL can store bytes that are not UTF-8; decoding them strictly would make
# every read of that key raise. Replaced (U+FFFD), they are shown as what they are.
ENCODING_ERRORS = "replace"


def _timeouts() -> dict[str, float]:
    # read at call time, so tests (and embedders) may lower SOCKET_TIMEOUT
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
        "health_check_interval": 30,
    }


def new_client(redis_url: str | None = None) -> aioredis.Redis:
    """A client with its own pool (for tests and blocking readers that must not share)."""
    url = resolve_url(redis_url)
    target = parse_url(url)
    try:
        if target.kind == "cluster":
            client = aioredis.RedisCluster(
                startup_nodes=[aioredis.cluster.ClusterNode(h, p) for h, p in target.nodes],
                username=target.username,
                password=target.password,
                ssl=target.tls,
                decode_responses=True,
                encoding_errors=ENCODING_ERRORS,
                **_timeouts(),
            )
        elif target.kind == "sentinel":
            client = _sentinel_primary(target, aioredis.sentinel.Sentinel, aioredis.Redis)
        else:
            scheme = url.split(":", 1)[0].lower()
            options = {}
            if scheme == "redis":
                options["connection_class"] = FastConnection
            elif scheme == "rediss":
                options["connection_class"] = FastSSLConnection
            timeouts = _timeouts()
            if options:  # the watchdog of FastConnection enforces SOCKET_TIMEOUT instead
                timeouts["socket_timeout"] = None
            client = aioredis.Redis.from_url(
                url,
                **options,
                decode_responses=True,
                encoding_errors=ENCODING_ERRORS,
                **timeouts,
            )
    except (ValueError, RedisClusterException) as exc:
        raise RedisUnavailable(redact_url(url), f"bad URL ({exc})") from None
    if target.kind != "single":  # a single server's URL is rebuilt from its pool (no query)
        _client_urls[client] = redact_url(url)
    return client


def new_sync_client(redis_url: str | None = None, **options):
    """The blocking (redis-py) client for the same URL forms, for Django's cache and tests."""
    import redis

    url = resolve_url(redis_url)
    target = parse_url(url)
    options.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
    options.setdefault("socket_timeout", SOCKET_TIMEOUT)
    if target.kind == "cluster":
        return redis.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in target.nodes],
            username=target.username,
            password=target.password,
            ssl=target.tls,
            **options,
        )
    if target.kind == "sentinel":
        return _sentinel_primary(target, redis.sentinel.Sentinel, redis.Redis, **options)
    return redis.Redis.from_url(url, **options)


def _sentinel_primary(target: RedisTarget, sentinel_class, redis_class, **options):
    auth = {"username": target.username, "password": target.password}
    tls = {"ssl": True} if target.tls else {}
    options = {
        "decode_responses": True,
        "encoding_errors": ENCODING_ERRORS,
        **_timeouts(),
        **options,
    }
    options.pop("health_check_interval", None)
    sentinel = sentinel_class(
        list(target.nodes),
        sentinel_kwargs={**auth, **tls, "socket_timeout": CONNECT_TIMEOUT},
        **options,
    )
    return sentinel.master_for(target.service, redis_class=redis_class, db=target.db, **auth, **tls)


def client_url(client: aioredis.Redis) -> str:
    """The (password-redacted) URL a client was made for, for error messages."""
    known = _client_urls.get(client)
    if known:
        return known
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    scheme = (
        "rediss" if client.connection_pool.connection_class.__name__.startswith("SSL") else "redis"
    )
    return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


class FailureTally:
    """How many times this process found Redis unavailable. The dashboard adds the count to a
    shared counter once Redis answers again (``take`` hands over what was not reported yet)."""

    def __init__(self) -> None:
        self.total = 0
        self.reported = 0

    def add(self) -> None:
        self.total += 1

    @property
    def unreported(self) -> int:
        return self.total - self.reported

    def take(self) -> int:
        new, self.reported = self.unreported, self.total
        return new

    def give_back(self, count: int) -> None:
        self.reported -= count


redis_failures = FailureTally()


def unavailable(client: aioredis.Redis, exc: BaseException) -> RedisUnavailable:
    redis_failures.add()
    return RedisUnavailable(client_url(client), str(exc) or type(exc).__name__)


async def check_connection(redis_url: str | None = None, timeout: float = 3.0) -> None:
    """Raise ``RedisUnavailable`` (one clear line) unless Redis answers PING in time."""
    url = resolve_url(redis_url)
    client = new_client(url)
    try:
        await asyncio.wait_for(client.ping(), timeout)
    except (TimeoutError, *UNAVAILABLE_ERRORS) as exc:
        redis_failures.add()
        raise RedisUnavailable(redact_url(url), str(exc) or "no answer in time") from None
    finally:
        await client.aclose()
