"""Live updates: group names, and the relay that moves the core's feed into the channel layer.

Exactly one relay is active across all ASGI worker processes: each worker runs ``Relay.run``,
and only the holder of a lease in Redis reads the feed. The cursor (the last relayed feed id)
is stored in Redis and written only by the lease holder, so a worker that takes over resumes
where the last one stopped. Browsers drop duplicates by event id, so a batch relayed twice
(after a crash between sending and saving the cursor) is shown once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time

from channels.layers import get_channel_layer
from django.conf import settings

from .core import RedisUnavailable, SessionIndex
from .core.scripts import Script
from .fragments import event_item
from .telemetry import report, worker_name

log = logging.getLogger(__name__)

SESSIONS_GROUP = "coord.sessions"

ACQUIRE_OR_RENEW = Script(
    "relay_lease",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
""",
)

# The cursor moves only while the caller still holds the lease (a fenced write).
COMMIT_CURSOR = Script(
    "relay_cursor",
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
""",
)

RELEASE_LEASE = Script(
    "relay_release",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
)


def session_group(session_id: str) -> str:
    """Channel-layer group names allow few characters, so a session's group is its digest."""
    return "coord.session." + hashlib.sha1(session_id.encode("utf-8", "surrogatepass")).hexdigest()


async def announce_audit(session_id: str) -> None:
    """Tell the session's open pages, in every process, that its audit trail grew. Sent after
    the audit row is saved (the intervention's event may reach the pages before it is)."""
    try:
        await get_channel_layer().group_send(session_group(session_id), {"type": "session.audit"})
    except Exception as exc:  # the action is done and audited; only the live refresh is lost
        log.warning("audit refresh for session %r not sent: %s", session_id, exc)


def parse_event_id(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


class Relay:
    """Reads the global feed while holding the relay lease; sends events to channel groups."""

    def __init__(
        self,
        index: SessionIndex | None = None,
        *,
        lease_ttl: float = 5.0,
        flush_interval: float = 0.25,
        worker_id: str | None = None,
        prune_every: float = 300.0,
    ) -> None:
        self.index = index or SessionIndex(
            settings.REDIS_URL, namespace=settings.COORDINATION_NAMESPACE
        )
        ns = self.index.namespace
        self.lease_key = f"{ns}:{{relay}}:lease"
        self.cursor_key = f"{ns}:{{relay}}:cursor"
        self.lease_ttl_ms = int(lease_ttl * 1000)
        self.flush_interval = flush_interval
        self.prune_every = prune_every
        self.worker_id = worker_id or worker_name()
        self.is_leader = False
        self.relayed = 0
        self._stopping = asyncio.Event()

    async def stop(self, task: asyncio.Task, timeout: float = 5.0) -> None:
        """Stop between two reads and release the lease. Cancelling a task while redis-py
        waits on a blocking read can leave it stuck (seen with Python 3.11), so the loop is
        asked to stop first and cancelled only if it does not."""
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
        except Exception:  # the task's own failure was logged where it happened
            pass

    async def run(self) -> None:
        """Forever: lead while holding the lease, else stand by and retry."""
        layer = get_channel_layer()
        try:
            while not self._stopping.is_set():
                try:
                    if await self._acquire():
                        self.is_leader = True
                        log.info("relay %s is now the active relay", self.worker_id)
                        await self._lead(layer)
                    self.is_leader = False
                    await report(self.index, self.worker_id)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self.lease_ttl_ms / 3000)
                except RedisUnavailable as exc:
                    self.is_leader = False
                    log.warning("relay %s: %s; retrying", self.worker_id, exc)
                    await asyncio.sleep(1.0)
        finally:
            self.is_leader = False
            try:
                await RELEASE_LEASE(self.index.redis, [self.lease_key], [self.worker_id])
            except Exception:  # shutting down: the lease expires by itself anyway
                pass

    async def _acquire(self) -> bool:
        return bool(
            await self.index.call(
                ACQUIRE_OR_RENEW(
                    self.index.redis, [self.lease_key], [self.worker_id, self.lease_ttl_ms]
                )
            )
        )

    async def _commit(self, cursor: str) -> bool:
        return bool(
            await self.index.call(
                COMMIT_CURSOR(
                    self.index.redis, [self.lease_key, self.cursor_key], [self.worker_id, cursor]
                )
            )
        )

    async def _lead(self, layer) -> None:
        cursor = await self.index.call(self.index.redis.get(self.cursor_key))
        if cursor is None:
            # First start ever: begin at the newest event rather than replaying history.
            cursor = await self.index.latest_feed_id()
            if not await self._commit(cursor):
                return
        renew_every = self.lease_ttl_ms / 3000
        last_renew = last_flush = last_prune = time.monotonic()
        changed: set[str] = set()
        while not self._stopping.is_set():
            entries = await self.index.read_feed(cursor, count=500, block=self.flush_interval)
            # One message per session and batch, its rows rendered here once for every browser.
            by_session: dict[str, list] = {}
            for entry in entries:
                by_session.setdefault(entry.event.session_id, []).append(event_item(entry.event))
            for session_id, items in by_session.items():
                await layer.group_send(
                    session_group(session_id), {"type": "session.events", "events": items}
                )
                changed.add(session_id)
            if entries:
                cursor = entries[-1].feed_id
                self.relayed += len(entries)
                if not await self._commit(cursor):
                    return
            now = time.monotonic()
            if changed and now - last_flush >= self.flush_interval:
                await layer.group_send(
                    SESSIONS_GROUP, {"type": "sessions.changed", "ids": sorted(changed)}
                )
                changed.clear()
                last_flush = now
            if now - last_renew >= renew_every:
                if not await self._acquire():
                    return
                await report(self.index, self.worker_id)
                last_renew = now
            if now - last_prune >= self.prune_every:
                # one process (the active relay) drops the index entries of expired sessions
                last_prune = now
                pruned = await self.index.prune()
                if pruned:
                    log.info("relay %s pruned %d expired sessions", self.worker_id, pruned)
