"""The relay that moves the core's feed into the channel layer (group names: ``groups``).

Exactly one relay is active across all ASGI worker processes: each worker runs ``Relay.run``,
and only the holder of a lease in Redis reads the feed. The cursor (the last relayed feed id)
is stored in Redis and written only by the lease holder, so a worker that takes over resumes
where the last one stopped. Browsers drop duplicates by event id, so a batch relayed twice
(after a crash between sending and saving the cursor) is shown once.

The feed is written by agents, and agents are untrusted: an entry may hold anything (bytes
that are not UTF-8, lone surrogates in its JSON, a payload that is not JSON, missing fields,
huge values). The relay reads the feed as bytes and turns each entry into a row on its own,
so one bad entry is shown as malformed, or skipped with a log line, and never stops the
relay; the cursor moves past it. Should the loop fail anyway, it restarts with backoff, and
``relay_health`` (``/healthz``) tells whether this process's relay runs and whether any
process holds the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.utils.html import format_html
from redis.client import NEVER_DECODE

from coordination.core import Event, InvalidCursor, RedisUnavailable, SessionIndex
from coordination.core.connection import UNAVAILABLE_ERRORS
from coordination.core.events import event_from_fields
from coordination.core.keys import Keyspace, validate_session_id
from coordination.core.scripts import Script
from coordination.dashboard import trends
from coordination.dashboard.fragments import event_item
from coordination.foundation.telemetry import report, worker_name
from coordination.realtime.channel_layer import RateLimitedWarning
from coordination.realtime.groups import SESSIONS_GROUP, session_group

log = logging.getLogger(__name__)

# A stream id as Redis writes it (64-bit parts); longer digit strings are not ids (and a
# 5,000-digit one would make int() raise).
_EVENT_ID = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?\Z")  # ASCII digits; \Z: no trailing newline
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_ITEM_CHARS = 256 * 1024  # one live row; a larger one is replaced by a note to reload
# A field over this is not decoded, parsed or rendered at all (the core writes at most its payload
# limit, 1 MiB by default; anything far larger was written around it, straight into Redis).
MAX_FIELD_BYTES = 16 * 1024 * 1024
MAX_MESSAGE_CHARS = 1024 * 1024  # one channel-layer message; a batch is split beyond it
MAX_BACKOFF = 30.0  # seconds between restarts of a relay loop that keeps failing
POISON_STRIKES = 3  # failures at the same cursor before the entry after it is skipped
TRENDS_SCAN_EVERY = 15.0  # seconds between looks for escalations gone past their SLA

# 1: the caller holds the lease (taken or renewed). Otherwise minus the milliseconds the
# holder's lease has left (0 if it has no expiry), so a standby wakes when it runs out.
ACQUIRE_OR_RENEW = Script(
    "relay_lease",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local left = redis.call('PTTL', KEYS[1])
if left > 0 then return -left end
return 0
""",
)
# A standby tries again this long after the holder's lease runs out (Redis expires a key when
# it is read past its time, so a few milliseconds are enough).
STANDBY_MARGIN = 0.02

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


def lease_key(namespace: str) -> str:
    return Keyspace(namespace).relay_lease


# an agent can write junk entries as fast as Redis takes them: one line per 10 s, then a count
_warn_skipped = RateLimitedWarning(log, "relay: feed entry %s skipped: %s")
_warn_trends = RateLimitedWarning(log, "relay: trends not counted: %s: %s")
_warn_malformed = RateLimitedWarning(
    log, "relay: event %s of feed entry %s cannot be rendered (%s); shown as malformed"
)


def parse_event_id(event_id: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` as a sortable pair; ``InvalidCursor`` for anything else."""
    if not isinstance(event_id, str) or not _EVENT_ID.match(event_id):
        raise InvalidCursor(f"event id {str(event_id)[:40]!r} is not a stream id")
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def clean(text: str) -> str:
    """``text`` with lone surrogates (from JSON's ``"\\ud800"``) replaced by U+FFFD: they
    cannot be encoded as UTF-8, so a message or frame holding one would fail to send."""
    return _SURROGATE.sub("\ufffd", text)


def _decode(value: object, *, strict: bool = False) -> str | None:
    if isinstance(value, str):
        return value
    if not isinstance(value, bytes):
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None if strict else value.decode("utf-8", "replace")


def feed_item(fields: dict[Any, Any], feed_id: str) -> tuple[str, dict[str, str]] | None:
    """One raw feed entry as ``(session id, live item)``, or ``None`` when it names no session
    or event a page could show (logged). Never raises on what an agent wrote: an entry that
    cannot be rendered as an event is rendered as a malformed one."""
    fields = {_decode(k) or "": v for k, v in fields.items()}
    session_id = _decode(fields.get("s"), strict=True)
    event_id = _decode(fields.get("e"), strict=True)
    try:
        validate_session_id(session_id)
    except Exception:
        _warn_skipped(feed_id, "no valid session id")
        return None
    if event_id is None or not _EVENT_ID.match(event_id):
        _warn_skipped(feed_id, "no valid event id")
        return None
    huge = max((len(v) for v in fields.values() if isinstance(v, (bytes, str))), default=0)
    if huge > MAX_FIELD_BYTES:
        _warn_malformed(event_id, feed_id, f"a field of {huge:,} bytes")
        note = f"This event is too large to show live ({huge:,} bytes); reload the page to see it."
        return session_id, {"id": event_id, "type": "", "html": _note_item(event_id, note)}
    text = {k: _decode(v) for k, v in fields.items() if k in ("t", "d", "src")}
    text = {k: v for k, v in text.items() if v is not None}
    try:
        item = event_item(event_from_fields(session_id, event_id, text))
    except Exception as exc:
        _warn_malformed(event_id, feed_id, type(exc).__name__)
        item = _malformed_item(session_id, event_id, text, type(exc).__name__)
    html = clean(str(item.get("html", "")))
    if len(html) > MAX_ITEM_CHARS:
        html = _note_item(
            event_id,
            f"This event is too large to show live ({len(html):,} "
            "characters of markup); reload the page to see it.",
        )
    return session_id, {
        "id": event_id,
        "type": clean(str(item.get("type", "")))[:100],
        "html": html,
    }


def _malformed_item(session_id: str, event_id: str, text: dict[str, str], reason: str) -> dict:
    ms = int(event_id.partition("-")[0])
    event = Event(
        id=event_id,
        type=clean(text.get("t", ""))[:100],
        data={"malformed event": reason, "raw": clean(text.get("d", ""))[:2000]},
        session_id=session_id,
        timestamp=ms / 1000.0 if ms < 10**15 else 0.0,
        source=clean(text.get("src", ""))[:256] or None,
    )
    try:
        return event_item(event)
    except Exception:
        return {
            "id": event_id,
            "type": "malformed",
            "html": _note_item(event_id, "A malformed event (it cannot be shown)."),
        }


def _note_item(event_id: str, note: str) -> str:
    # event_id matched _EVENT_ID (digits and a dash); format_html escapes both anyway
    return format_html(
        '<li class="event malformed" id="ev-{}" data-event-id="{}"><p class="muted">{}</p></li>',
        event_id,
        event_id,
        note,
    )


def _chunks(items: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """Items split so that no channel-layer message carries more than MAX_MESSAGE_CHARS."""
    chunks: list[list[dict[str, str]]] = [[]]
    size = 0
    for item in items:
        if chunks[-1] and size + len(item["html"]) > MAX_MESSAGE_CHARS:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += len(item["html"])
    return chunks


def _raw_entries(reply: Any) -> list[tuple[str, dict]]:
    """XREAD's reply (RESP2 list or RESP3 map) as ``(feed id, fields)`` pairs, undecoded."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (s[1] for s in reply)
    entries = []
    for stream in streams:
        for feed_id, fields in stream:
            if isinstance(fields, list):  # RESP3 without the pairs-to-dict callback
                fields = dict(zip(fields[::2], fields[1::2], strict=False))
            entries.append((_decode(feed_id) or "", fields or {}))
    return entries


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
        self.lease_key = self.index.keys.relay_lease
        self.cursor_key = self.index.keys.relay_cursor
        self.lease_ttl_ms = int(lease_ttl * 1000)
        self.flush_interval = flush_interval
        self.prune_every = prune_every
        self.worker_id = worker_id or worker_name()
        self.is_leader = False
        self.relayed = 0
        self.skipped = 0  # feed entries no page could show (logged)
        self.restarts = 0  # times the loop failed unexpectedly and was started again
        self._lease_left: float | None = None  # seconds the holder's lease had left (standby)
        self.state = "starting"  # starting, leading, standby, restarting, stopped
        self.beat_at = time.monotonic()  # the loop's last sign of life
        self._stopping = asyncio.Event()
        # set while leading with the cursor established: what follows in the feed gets relayed
        self.reading = asyncio.Event()
        self._failures = 0
        self._cursor: str | None = None
        self._crash_cursor: str | None = None
        self._strikes = 0

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
        """Forever: lead while holding the lease, else stand by and retry. A failure that is
        not Redis going away is logged with its traceback and the loop starts again after a
        backoff (1 s, doubling to 30 s while it keeps failing)."""
        layer = get_channel_layer()
        try:
            while not self._stopping.is_set():
                self.beat_at = time.monotonic()
                try:
                    self._lease_left = None
                    if await self._acquire():
                        self.is_leader = True
                        self.state = "leading"
                        log.info("relay %s is now the active relay", self.worker_id)
                        try:
                            await self._lead(layer)
                        finally:
                            self.reading.clear()
                    self.is_leader = False
                    self.state = "standby"
                    await report(self.index, self.worker_id)
                    # Wake when the holder's lease runs out, not up to a third of a lease later:
                    # a dead leader is replaced within the lease time (plus STANDBY_MARGIN).
                    wait = self.lease_ttl_ms / 3000
                    if self._lease_left is not None:
                        wait = min(wait, self._lease_left + STANDBY_MARGIN)
                    await self._pause(wait)
                except (RedisUnavailable, *UNAVAILABLE_ERRORS) as exc:
                    self.is_leader = False
                    self.state = "standby"
                    log.warning("relay %s: %s; retrying", self.worker_id, exc)
                    await self._pause(1.0)
                except Exception:
                    await self._failed()
        finally:
            self.is_leader = False
            self.state = "stopped"
            try:
                await RELEASE_LEASE(self.index.redis, [self.lease_key], [self.worker_id])
            except Exception:  # shutting down: the lease expires by itself anyway
                pass

    async def _failed(self) -> None:
        self.is_leader = False
        self.state = "restarting"
        self.restarts += 1
        self._failures += 1
        if self._cursor is not None and self._cursor == self._crash_cursor:
            self._strikes += 1
        else:
            self._crash_cursor, self._strikes = self._cursor, 1
        delay = min(MAX_BACKOFF, 2.0 ** min(self._failures - 1, 8))
        log.exception(
            "relay %s failed at feed cursor %s; restarting in %.0f s",
            self.worker_id,
            self._cursor,
            delay,
        )
        await self._pause(delay)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _acquire(self) -> bool:
        result = int(
            await self.index.call(
                ACQUIRE_OR_RENEW(
                    self.index.redis, [self.lease_key], [self.worker_id, self.lease_ttl_ms]
                )
            )
        )
        self._lease_left = -result / 1000 if result < 0 else None
        return result == 1

    async def _commit(self, cursor: str) -> bool:
        return bool(
            await self.index.call(
                COMMIT_CURSOR(
                    self.index.redis, [self.lease_key, self.cursor_key], [self.worker_id, cursor]
                )
            )
        )

    async def _read(self, cursor: str, count: int, block: float) -> list[tuple[str, dict]]:
        """The feed after ``cursor`` as raw bytes: the core's client decodes replies as strict
        UTF-8, so one entry written with other bytes would make every read of it raise."""
        command = self.index.redis.execute_command(
            "XREAD",
            "COUNT",
            count,
            "BLOCK",
            max(1, int(block * 1000)),
            "STREAMS",
            self.index.keys.feed,
            cursor,
            **{NEVER_DECODE: True},
        )
        return _raw_entries(await self.index.call_blocking(command))

    async def _latest(self) -> str:
        newest = await self.index.call(
            self.index.redis.execute_command(
                "XREVRANGE", self.index.keys.feed, "+", "-", "COUNT", 1, **{NEVER_DECODE: True}
            )
        )
        return _decode(newest[0][0]) if newest else "0-0"

    async def _send(self, layer, group: str, message: dict) -> None:
        try:
            await layer.group_send(group, message)
        except (RedisUnavailable, *UNAVAILABLE_ERRORS):
            raise  # not sent: the batch is read again once Redis is back
        except Exception:  # this message cannot be sent; the others still can
            log.exception("relay %s could not send a %s message", self.worker_id, message["type"])

    async def _count_trends(self, entries: list[tuple[str, dict]], *, scan: bool = False) -> None:
        """Feeds /trends/ (``dashboard.trends``). Statistics never stop relaying: a failure
        other than Redis going away is logged and the batch goes uncounted."""
        try:
            if scan:
                await trends.scan_breaches(self.index)
            else:
                await trends.record_entries(self.index, entries)
        except (RedisUnavailable, *UNAVAILABLE_ERRORS):
            raise
        except Exception as exc:
            _warn_trends(type(exc).__name__, exc)

    async def _lead(self, layer) -> None:
        raw = await self.index.call(
            self.index.redis.execute_command("GET", self.cursor_key, **{NEVER_DECODE: True})
        )
        cursor = _decode(raw, strict=True)
        if cursor is None or not _EVENT_ID.match(cursor):
            # First start ever (or a cursor someone overwrote): begin at the newest event
            # rather than replaying history.
            if cursor is not None:
                log.warning("relay %s: the stored cursor is not a stream id", self.worker_id)
            cursor = await self._latest()
            if not await self._commit(cursor):
                return
        self._cursor = cursor
        if self._strikes >= POISON_STRIKES and cursor == self._crash_cursor:
            # The loop failed here again and again: move past the entry after the cursor.
            poison = await self._read(cursor, 1, self.flush_interval)
            if poison:
                log.error(
                    "relay %s skips feed entry %s after %d failures on it",
                    self.worker_id,
                    poison[0][0],
                    self._strikes,
                )
                cursor = poison[0][0]
                self.skipped += 1
                if not await self._commit(cursor):
                    return
                self._cursor = cursor
            self._strikes = 0
        renew_every = self.lease_ttl_ms / 3000
        self.reading.set()
        last_renew = last_flush = last_prune = last_trends_scan = time.monotonic()
        changed: set[str] = set()
        notices, epoch = 0, time.time_ns()  # unique to this run of the loop
        while not self._stopping.is_set():
            self.beat_at = time.monotonic()
            entries = await self._read(cursor, 500, self.flush_interval)
            # One message per session and batch, its rows rendered here once for every browser.
            by_session: dict[str, list[dict[str, str]]] = {}
            for feed_id, fields in entries:
                made = feed_item(fields, feed_id)
                if made is None:
                    self.skipped += 1
                    continue
                by_session.setdefault(made[0], []).append(made[1])
            for session_id, items in by_session.items():
                for chunk in _chunks(items):
                    await self._send(
                        layer,
                        session_group(session_id),
                        {"type": "session.events", "events": chunk},
                    )
                changed.add(session_id)
            if entries:
                # counted before the cursor moves; the trends' own mark skips a batch counted
                # already (read again after a crash between the two)
                await self._count_trends(entries)
                cursor = entries[-1][0]
                self.relayed += len(entries)
                if not await self._commit(cursor):
                    return
                self._cursor = cursor
                self._failures = 0
            now = time.monotonic()
            if changed and now - last_flush >= self.flush_interval:
                # "notice" names this notice: every page of a process shares one read and one
                # render of it (coordination.realtime.consumers.NoticeWork)
                notices += 1
                await self._send(
                    layer,
                    SESSIONS_GROUP,
                    {
                        "type": "sessions.changed",
                        "ids": sorted(changed),
                        "notice": f"{self.worker_id}:{epoch}:{notices}",
                    },
                )
                changed.clear()
                last_flush = now
            if now - last_renew >= renew_every:
                if not await self._acquire():
                    return
                await report(self.index, self.worker_id)
                last_renew = now
            if now - last_trends_scan >= TRENDS_SCAN_EVERY:
                last_trends_scan = now
                await self._count_trends([], scan=True)
            if now - last_prune >= self.prune_every:
                # one process (the active relay) drops the index entries of expired sessions
                last_prune = now
                try:
                    pruned = await self.index.prune()
                except (RedisUnavailable, *UNAVAILABLE_ERRORS):
                    raise
                except Exception:  # housekeeping over agent-written keys: never stops relaying
                    log.exception("relay %s could not prune expired sessions", self.worker_id)
                    pruned = 0
                if pruned:
                    log.info("relay %s pruned %d expired sessions", self.worker_id, pruned)


# -- this process's relay, as /healthz reports it --


@dataclass
class _ProcessRelay:
    relay: Relay | None  # None: this process runs no relay (COORDINATION_RELAY off)
    task: asyncio.Task
    lease_missing_since: float | None = None


_process: _ProcessRelay | None = None


def register_process_relay(relay: Relay | None, task: asyncio.Task) -> None:
    """Called by the ASGI lifespan: the relay task (or the relay-less reporting task) this
    process runs, for ``relay_health``."""
    global _process
    _process = _ProcessRelay(relay, task)


def unregister_process_relay(task: asyncio.Task | None) -> None:
    """At shutdown (the lifespan's task ends with it); only the registration of ``task``."""
    global _process
    if _process is not None and _process.task is task:
        _process = None


def relay_state(relay: Relay | None, task: asyncio.Task) -> str:
    """leading, standby, off (no relay here), restarting (its loop failed and waits to start
    again), stalled (no sign of life for a long time) or stopped (its task ended)."""
    if task.done():
        return "stopped"
    if relay is None:
        return "off"
    stall_after = max(30.0, 3 * relay.lease_ttl_ms / 1000) + MAX_BACKOFF
    if time.monotonic() - relay.beat_at > stall_after:
        return "stalled"
    return relay.state if relay.state != "starting" else "standby"


async def relay_health(redis) -> tuple[dict[str, str], bool] | None:
    """``({"relay": state, "relay_lease": "held" | "none" | "unknown"}, healthy)`` for this
    process, or ``None`` when no relay was started here (no ASGI lifespan, e.g. a test
    client). Unhealthy: this process's relay is not running, or no process has held the
    lease for longer than a lease lasts. Names no worker, host or address."""
    current = _process
    if current is None:
        return None
    state = relay_state(current.relay, current.task)
    lease_ttl = current.relay.lease_ttl_ms / 1000 if current.relay else 5.0
    healthy = state in ("leading", "standby", "off")
    try:
        held = await asyncio.wait_for(
            redis.exists(lease_key(settings.COORDINATION_NAMESPACE)), timeout=2
        )
    except (RedisUnavailable, TimeoutError, *UNAVAILABLE_ERRORS):
        return {"relay": state, "relay_lease": "unknown"}, healthy  # Redis is reported apart
    now = time.monotonic()
    if held:
        current.lease_missing_since = None
        return {"relay": state, "relay_lease": "held"}, healthy
    if current.lease_missing_since is None:
        current.lease_missing_since = now
    # between one holder releasing the lease and the next taking it, it is briefly absent
    leaderless = now - current.lease_missing_since > lease_ttl
    return {"relay": state, "relay_lease": "none"}, healthy and not leaderless
