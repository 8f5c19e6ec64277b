"""What every public class of the core shares: the client, the key space, limits, script calls."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .calls import fast_pool, run_script
from .connection import (
    UNAVAILABLE_ERRORS,
    is_cluster,
    is_unavailable_reply,
    resolve_url,
    shared_client,
    unavailable,
)
from .errors import CoordinationError, CorruptStoredValue
from .events import DEFAULT_MAX_PAYLOAD_BYTES
from .keys import Keyspace, validate_session_id
from .scripts import SESSION_KEY_COUNT, SessionScript, apply_index_script, read_hashes_script

log = logging.getLogger("coordination")

DEFAULT_STREAM_MAXLEN = 10_000
DEFAULT_FEED_MAXLEN = 100_000
DEFAULT_RETENTION = timedelta(days=7)
DEFAULT_CLAIM_TTL = 30.0


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
        self._global_keys = self.keys.global_keys()
        self._keys_cache: dict[str, list[str]] = {}

    @property
    def redis(self) -> aioredis.Redis:
        """The client; shared pools are per event loop, so this is resolved on each use."""
        if self._client is not None:
            return self._client
        return shared_client(self.redis_url)

    async def aclose(self) -> None:
        """Release this object's resources. A shared pool stays open for other users."""

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _script_keys(self, session_id: str, cluster: bool = False) -> list[str]:
        """The KEYS of a session's scripts (validated and built once per session id)."""
        keys = self._keys_cache.get(session_id)
        if keys is None:
            validate_session_id(session_id)
            if len(self._keys_cache) >= 1024:
                self._keys_cache.clear()
            keys = self._keys_cache[session_id] = [
                *self.keys.session(session_id).all(),
                *self._global_keys,
            ]
        return keys[:SESSION_KEY_COUNT] if cluster else keys

    def _script_args(self, session_id: str, *args: Any) -> list[Any]:
        return [session_id, self.stream_maxlen, self.feed_maxlen, self.retention_ms, *args]

    async def _run(self, script: SessionScript, session_id: str, *args: Any) -> Any:
        client = self.redis
        pool = fast_pool(client)  # one server, the hot path (checked first: is_cluster is slow)
        cluster = pool is None and is_cluster(client)
        keys = self._script_keys(session_id, cluster)
        try:
            if pool is not None:
                return await run_script(pool, script, keys, self._script_args(session_id, *args))
            if not cluster:
                return await script(client, keys, self._script_args(session_id, *args))
            result, ops = await script.cluster(client, keys, self._script_args(session_id, *args))
        except UNAVAILABLE_ERRORS as exc:
            raise unavailable(client, exc) from None
        except ResponseError as exc:
            if is_unavailable_reply(exc):
                raise unavailable(client, exc) from None
            raise CoordinationError(f"Redis refused the {script.name} script: {exc}") from exc
        except AttributeError as exc:
            if not cluster:
                raise
            # redis-py's cluster client, left without nodes, fails on None (issue 17)
            raise unavailable(client, exc) from None
        if ops:
            await self._apply_index(client, session_id, ops)
        return result

    async def _apply_index(self, client, session_id: str, ops: str) -> None:
        """Cluster mode's second step. The session's change is already done, so a failure here
        must not be reported as a failed operation (a retried publish would be a duplicate):
        it is retried, then logged; the next change of the session re-syncs its index entry."""
        keys = [*self._global_keys, self.keys.applied]
        for attempt in range(3):
            try:
                await apply_index_script(client, keys, [ops])
                return
            except (*UNAVAILABLE_ERRORS, ResponseError) as exc:
                if attempt == 2:
                    log.error("index update for session %r was not applied: %s", session_id, exc)
                    return
                await asyncio.sleep(0.05 * (attempt + 1))

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
