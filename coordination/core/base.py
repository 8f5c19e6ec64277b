"""What every public class of the core shares: the client, the key space, limits, script calls."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .calls import (
    NotReplicated,
    fast_pool,
    pack_keys,
    run_cluster_script,
    run_script,
    wait_command,
)
from .connection import (
    UNAVAILABLE_ERRORS,
    heal_shared_client,
    is_cluster,
    is_unavailable_reply,
    resolve_url,
    shared_client,
    unavailable,
)
from .errors import (
    CoordinationError,
    CorruptStoredValue,
    InvalidIdempotencyKey,
    InvalidLease,
    RedisUnavailable,
)
from .events import DEFAULT_MAX_PAYLOAD_BYTES
from .keys import Keyspace, validate_session_id
from .scripts import (
    SESSION_KEY_COUNT,
    SessionScript,
    apply_index_script,
    clear_session_script,
    outbox_ack_script,
    read_hashes_script,
)

log = logging.getLogger("coordination")

DEFAULT_STREAM_MAXLEN = 10_000
DEFAULT_FEED_MAXLEN = 100_000
DEFAULT_RETENTION = timedelta(days=7)
DEFAULT_CLAIM_TTL = 30.0

# On a Cluster an operation whose answer was lost (or that met a failover) is sent again,
# with the same operation id, for this long: a failover takes a few seconds (issue 17).
CLUSTER_RETRY_SECONDS = 15.0


def _op_prefix() -> str:
    return "o:" + os.urandom(6).hex() + ":"


# Operation ids: a random prefix per process (new after a fork) and a counter; unique
# without a system call per operation.
_op_state = [_op_prefix(), itertools.count(1)]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        after_in_child=lambda: _op_state.__setitem__(
            slice(None), [_op_prefix(), itertools.count(1)]
        )
    )


MAX_LEASE_SECONDS = 365 * 24 * 3600


def lease_ms(ttl: object) -> int:
    """A claim's ``ttl`` in seconds as milliseconds (at least 1); ``InvalidLease`` unless a
    finite positive number up to a year (Redis refuses a PEXPIRE past its range only after the
    script wrote the claim, which then never expired)."""
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not math.isfinite(ttl)
        or not 0 < ttl <= MAX_LEASE_SECONDS
    ):
        raise InvalidLease(
            f"ttl must be a positive number of seconds up to {MAX_LEASE_SECONDS}, not {ttl!r:.40}"
        )
    return max(1, int(ttl * 1000))


def new_op_id() -> str:
    """A fresh operation id (see ``scripts.OP_WINDOW_MS``)."""
    return f"{_op_state[0]}{next(_op_state[1]):x}"


def caller_op_id(kind: str, key: object) -> str:
    """The operation id for a caller's idempotency key (``publish(idempotency_key=...)``):
    prefixed by the operation's kind, so the same key given to two operations stays two."""
    if not isinstance(key, str) or not key or len(key) > 256 or not _utf8(key):
        raise InvalidIdempotencyKey(
            f"idempotency_key must be a string of 1-256 characters, not {str(key)[:40]!r}"
        )
    return f"k:{kind}:{key}"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: Redis could not be sent the key
        return False
    return True


# Cluster mode: per session outbox, the newest entry this process saw applied on the index
# slot; sent with the session's next script, which drops it and older ones.
_acked: dict[str, str] = {}


def _script_failure(client: Any, script: Any, exc: BaseException) -> CoordinationError:
    """A failed script call as the core's error: the server unavailable (a connection error,
    a refused WAIT, a failover's UNBLOCKED) or the script refused."""
    if isinstance(exc, ResponseError) and not is_unavailable_reply(exc):
        return CoordinationError(f"Redis refused the {script.name} script: {exc}")
    return unavailable(client, exc)


def _cause(exc: BaseException) -> BaseException | None:
    # an unavailable server hides redis-py's chain (it names the URL, with any password);
    # a refused script keeps it
    if isinstance(exc, ResponseError) and not is_unavailable_reply(exc):
        return exc
    return None


class RedisBacked:
    """Holds a Redis client (given, or shared per URL and event loop) and a ``Keyspace``."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        client: aioredis.Redis | None = None,
        namespace: str | None = None,
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        feed_maxlen: int = DEFAULT_FEED_MAXLEN,
        retention: timedelta | float = DEFAULT_RETENTION,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        clock: Callable[[], float] = time.time,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        self.redis_url = resolve_url(redis_url) if client is None else redis_url
        self._client = client
        namespace = namespace or os.environ.get("COORDINATION_NAMESPACE") or "coord"
        self.keys = Keyspace(namespace)
        self.namespace = namespace
        if stream_maxlen < 1 or feed_maxlen < 1:
            raise ValueError("stream_maxlen and feed_maxlen must be positive")
        self.stream_maxlen = int(stream_maxlen)
        self.feed_maxlen = int(feed_maxlen)
        seconds = retention.total_seconds() if isinstance(retention, timedelta) else retention
        if seconds <= 0:
            raise ValueError("retention must be positive")
        self.retention_ms = int(seconds * 1000)
        self.max_payload_bytes = int(max_payload_bytes)
        # Wall-clock seconds for decisions made in Python (what has outlived the retention);
        # tests move it instead of waiting for the real clock.
        self.clock = clock
        # Durability (docs/reliability.md): with ``wait_replicas`` N > 0 every write is
        # followed, on the same connection, by WAIT N: an operation is reported done only once
        # N replicas have it (else RedisUnavailable after ``wait_timeout`` seconds; the write
        # is on the primary, and a retry with the same operation id waits again).
        if wait_replicas < 0 or wait_timeout <= 0:
            raise ValueError("wait_replicas must be >= 0 and wait_timeout positive")
        self.wait_replicas = int(wait_replicas)
        self._wait_timeout_ms = max(1, int(wait_timeout * 1000))
        self._wait = (
            wait_command(self.wait_replicas, max(1, int(wait_timeout * 1000)))
            if self.wait_replicas
            else None
        )
        self._global_keys = self.keys.global_keys()
        self._sessions: dict[str, tuple[list[str], tuple[bytes, int]]] = {}

    @property
    def redis(self) -> aioredis.Redis:
        """The client; shared pools are per event loop, so this is resolved on each use."""
        if self._client is not None:
            return self._client
        return shared_client(self.redis_url)

    async def aclose(self) -> None:
        """Release what this object owns: nothing beyond Python objects. A client passed in
        belongs to the caller, who closes it; the shared client belongs to its event loop and
        is closed with it (``connection.shared_client``), since other objects on the loop use
        it. So never close ``.redis`` of an object you did not give a client to."""
        self._sessions.clear()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _session(self, session_id: str) -> tuple[list[str], tuple[bytes, int]]:
        """A session's script KEYS and their ``calls.pack_keys`` form with the first arguments
        of its every call (``_script_args``): validated and built once per session id.

        Only a plain ``str`` is looked up and kept: a session id from an agent's JSON may be
        a list or an object (unhashable: a TypeError here, not ``InvalidSessionId``), and a
        ``str`` subclass may redefine equality and find another session's keys."""
        plain = type(session_id) is str
        entry = self._sessions.get(session_id) if plain else None
        if entry is None:
            validate_session_id(session_id)
            keys = [*self.keys.session(session_id).all(), *self._global_keys]
            entry = (keys, pack_keys(keys, tuple(self._script_args(session_id))))
            if plain:
                if len(self._sessions) >= 1024:
                    self._sessions.clear()
                self._sessions[session_id] = entry
        return entry

    def _script_keys(self, session_id: str, cluster: bool = False) -> list[str]:
        """The KEYS of a session's scripts (the session's own only, on a Cluster)."""
        keys = self._session(session_id)[0]
        return keys[:SESSION_KEY_COUNT] if cluster else keys

    def _script_args(self, session_id: str, *args: Any) -> list[Any]:
        return [session_id, self.stream_maxlen, self.feed_maxlen, self.retention_ms, *args]

    async def _run(
        self, script: SessionScript, session_id: str, *args: Any, op_id: str | None = None
    ) -> Any:
        """Run a session script once per operation id (``op_id``; on paths that may re-send,
        a fresh one when not given): a retry with the same id returns the first outcome (see
        ``scripts.OP_WINDOW_MS``)."""
        client = self.redis
        pool = fast_pool(client)  # one server, the hot path (checked first: is_cluster is slow)
        if pool is not None:
            # Sent once (``calls.execute`` never re-sends a script that may have run), so an
            # id is needed only when the caller may retry with it (``idempotency_key``):
            # without one the script keeps no outcome (5 fewer calls from Lua per operation,
            # issue 18).
            keys, packed_keys = self._session(session_id)
            try:
                return await run_script(
                    pool,
                    script,
                    keys,
                    [
                        session_id,
                        self.stream_maxlen,
                        self.feed_maxlen,
                        self.retention_ms,
                        *args,
                        "" if op_id is None else op_id,
                    ],
                    self._wait,
                    self.wait_replicas,
                    packed_keys,
                )
            except (NotReplicated, *UNAVAILABLE_ERRORS, ResponseError) as exc:
                raise _script_failure(client, script, exc) from _cause(exc)
        op = new_op_id() if op_id is None else op_id
        if not is_cluster(client):
            # Sentinel, or a client given by the caller: redis-py may re-send; the id makes
            # a re-sent script return its first outcome
            keys = self._script_keys(session_id)
            try:
                if self._wait is None:
                    return await script(client, keys, self._script_args(session_id, *args, op))
                return await self._run_and_wait(client, script, keys, session_id, args, op)
            except (NotReplicated, *UNAVAILABLE_ERRORS, ResponseError) as exc:
                raise _script_failure(client, script, exc) from _cause(exc)
        deadline = time.monotonic() + CLUSTER_RETRY_SECONDS
        delay = 0.05
        while True:
            try:
                return await self._run_cluster(client, script, session_id, args, op)
            except RedisUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                client = self._heal(client)

    async def _run_and_wait(self, client, script, keys, session_id, args, op):
        """The script, then WAIT on the same connection (WAIT counts the replicas that have
        this connection's writes; another connection's WAIT would return at once)."""
        single = client.client()
        try:
            result = await script(single, keys, self._script_args(session_id, *args, op))
            acked = await single.execute_command("WAIT", self.wait_replicas, self._wait_timeout_ms)
        finally:
            await single.aclose()
        if int(acked) < self.wait_replicas:
            raise NotReplicated(int(acked), self.wait_replicas)
        return result

    def _heal(self, client):
        """The client to try next after ``client`` failed: for a shared client, a new one
        when it has not been rebuilt in the last second (redis-py's cluster client can be left
        without nodes for good after a failover, issue 17); a caller's client is kept."""
        if self._client is not None:
            return self._client
        return heal_shared_client(self.redis_url, client)

    async def _run_cluster(self, client, script: SessionScript, session_id: str, args, op: str):
        keys = self._script_keys(session_id, True)
        outbox = keys[SESSION_KEY_COUNT - 1]
        try:
            result, pending = await run_cluster_script(
                client,
                script.cluster,
                keys,
                self._script_args(session_id, *args, _acked.get(outbox, ""), op),
                self._wait,
                self.wait_replicas,
            )
        except (NotReplicated, *UNAVAILABLE_ERRORS) as exc:
            raise unavailable(client, exc) from None
        except ResponseError as exc:
            if is_unavailable_reply(exc):
                raise unavailable(client, exc) from None
            raise CoordinationError(f"Redis refused the {script.name} script: {exc}") from exc
        except AttributeError as exc:
            # redis-py's cluster client, left without nodes, fails on None (issue 17)
            raise unavailable(client, exc) from None
        if pending:
            await self._apply_index(client, session_id, outbox, pending)
            if script is clear_session_script:
                # the outbox's entries (they hold event data) go once applied; the hash
                # keeps its numbering until the retention ends
                try:
                    await outbox_ack_script(client, [outbox], [pending[-2]])
                except (*UNAVAILABLE_ERRORS, ResponseError):
                    pass  # the outbox expires with the session's retention
        return result

    async def _apply_index(self, client, session_id: str, outbox: str, pending: list) -> None:
        """Cluster mode's second step: the outbox entries the session script returned,
        applied on the index slot (each entry once). Until it is applied the operation is
        not reported done: a failure raises ``RedisUnavailable`` and the retry, with the same
        operation id, returns the first outcome and applies what is still pending."""
        keys = [*self._global_keys, self.keys.applied]
        try:
            await run_cluster_script(
                client,
                apply_index_script,
                keys,
                [session_id, *pending],
                self._wait,
                self.wait_replicas,
            )
        except (NotReplicated, *UNAVAILABLE_ERRORS) as exc:
            raise unavailable(client, exc) from None
        except AttributeError as exc:
            raise unavailable(client, exc) from None
        except ResponseError as exc:
            if is_unavailable_reply(exc):
                raise unavailable(client, exc) from None
            # refused (a key of the index written around the core with the wrong type):
            # re-sending would refuse again, so the entries are dropped from the outbox
            log.error("index update for session %r was refused: %s", session_id, exc)
        if len(_acked) >= 4096:
            _acked.clear()
        _acked[outbox] = pending[-2]

    async def read_hashes(self, *keys: str) -> list[dict[str, str]]:
        """HGETALL of several hashes of one session, read in one atomic step."""
        replies = await self.call(read_hashes_script(self.redis, list(keys), []))
        return [dict(zip(flat[::2], flat[1::2], strict=True)) for flat in replies]

    async def call_blocking(self, awaitable):
        """``call`` for a blocking read (XREAD BLOCK). If the caller is cancelled, the read is
        left to finish by itself (within its BLOCK time) instead of being cancelled: cancelling
        redis-py in the middle of a read can leave the task stuck (seen on Python 3.11)."""
        read = asyncio.ensure_future(self.call(awaitable))
        try:
            return await asyncio.shield(read)
        except asyncio.CancelledError:
            read.add_done_callback(_consume_outcome)
            raise

    async def call(self, awaitable):
        """Await a plain Redis command, turning connection failures into ``RedisUnavailable``
        and a key of the wrong type into ``CorruptStoredValue``."""
        try:
            return await awaitable
        except UNAVAILABLE_ERRORS as exc:
            raise unavailable(self.redis, exc) from None
        except AttributeError as exc:
            if not is_cluster(self.redis):
                raise
            # redis-py's cluster client, left without nodes, fails on None (issue 17)
            raise unavailable(self.redis, exc) from None
        except ResponseError as exc:
            if is_unavailable_reply(exc):
                raise unavailable(self.redis, exc) from None
            message = str(exc)
            # Anyone holding REDIS_URL can SET a key the core keeps as a hash or sorted set.
            # redis-py drops the server's words from a pipeline's error, so one there is
            # taken for the same cause (the core's pipelines only read and write its keys).
            if "WRONGTYPE" in message or "of pipeline caused error" in message:
                raise CorruptStoredValue("", "a key", message[:300]) from None
            raise


def _consume_outcome(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
