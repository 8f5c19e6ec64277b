"""``SessionIndex``: what the dashboard reads. Every list costs O(log N + page) round-trip work."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from .approvals import Approval, approval_from_record, pending_count, queue_member
from .base import RedisBacked
from .connection import is_cluster
from .coordinator import validate_event_id
from .errors import InvalidCursor, InvalidSessionId
from .events import Event, clean_text, encode_json, event_from_fields, is_stream_id
from .keys import MAX_ID_LENGTH, STATUSES, validate_agent_id, validate_session_id
from .scripts import clear_session_script, heartbeat_script

MAX_PAGE = 200
DEFAULT_STALE_AFTER = 60.0


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One session as the index knows it: status, owner, controller, last event."""

    session_id: str
    status: str
    owner: str | None
    controller: str | None
    last_event_id: str | None
    last_event_type: str | None
    last_activity: float | None
    created: float | None
    taken_at: float | None = None
    escalated_at: float | None = None
    # the queue an escalation asked for (``data["queue"]``); None is the default queue
    escalation_queue: str | None = None
    claim_agent: str | None = None
    claim_token: int | None = None
    claim_expires_at: float | None = None
    fence: int = 0
    # approvals requested and not yet decided (nor expired)
    pending_approvals: int = 0

    @property
    def is_human_controlled(self) -> bool:
        return self.controller is not None


@dataclass(frozen=True, slots=True)
class SessionPage:
    sessions: list[SessionSummary]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ApprovalPage:
    """Pending approvals of every session, oldest request first."""

    approvals: list[Approval]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class AgentPresence:
    agent_id: str
    capabilities: list[str]
    load: Any
    last_seen: float
    sessions_held: int
    stale: bool
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """An event as read from the global feed: ``feed_id`` orders all sessions' events."""

    feed_id: str
    event: Event


# Timestamps past this (the year 9999) cannot be shown as dates; they were not written by the core.
MAX_TIMESTAMP = 253402300799.0
# Presence records larger than this are not decoded (the core writes a few hundred bytes).
MAX_PRESENCE_RECORD = 64 * 1024
MAX_CAPABILITIES = 50
MAX_CAPABILITY_CHARS = 100


def _int(value: object) -> int | None:
    """An integer read from Redis, or None if whatever is stored there is not one."""
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def _seconds(value: float | None) -> float | None:
    """Unix seconds, or None when not a time that can be shown (inf, negative, year > 9999)."""
    if value is None or not math.isfinite(value) or not 0 <= value <= MAX_TIMESTAMP:
        return None
    return value


def _text(value: str | None) -> str | None:
    """A stored name (owner, status, queue...), cut to the longest id the core accepts: the
    core never writes more, and a page shows every one of them."""
    if not value:
        return None
    return value if len(value) <= MAX_ID_LENGTH else value[: MAX_ID_LENGTH - 1] + "…"


def _ms(value: str | None) -> float | None:
    ms = _int(value) if value else None
    return None if ms is None else _seconds(ms / 1000.0)


def invalid_value(value: object, limit: int = 60) -> str:
    """A value that is not what its field should hold, shown as what it is: ``(invalid: 5)``."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return clean_text(f"(invalid: {text if len(text) <= limit else text[: limit - 1] + '…'})")


def presence_capabilities(value: object) -> list[str]:
    """An agent's capabilities as a short list of short strings, whatever it announced:
    items that are not strings (or a value that is not a list) are shown as invalid."""
    if value is None or value == []:
        return []
    if not isinstance(value, list):
        return [invalid_value(value)]
    caps = []
    for item in value[:MAX_CAPABILITIES]:
        if not isinstance(item, str):
            caps.append(invalid_value(item))
        elif len(item) > MAX_CAPABILITY_CHARS:
            caps.append(clean_text(item[: MAX_CAPABILITY_CHARS - 1]) + "…")
        else:
            caps.append(clean_text(item))
    if len(value) > MAX_CAPABILITIES:
        caps.append(f"(+{len(value) - MAX_CAPABILITIES} more)")
    return caps


def presence_load(value: object) -> float | int | str | None:
    """A load is a finite number or absent; anything else is shown as invalid."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, int) or math.isfinite(value):
            return value if abs(value) < 1e15 else invalid_value(value)
    return invalid_value(value)


def presence_record(raw: str | None) -> tuple[dict[str, Any], str | None]:
    """The stored presence record, or ``({}, why)`` when it is not a JSON object."""
    if not raw:
        return {}, None
    if not isinstance(raw, str) or len(raw) > MAX_PRESENCE_RECORD:
        return {}, f"(invalid: presence record of {len(raw)} characters)"
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return {}, invalid_value(raw)
    if not isinstance(record, dict):
        return {}, invalid_value(record)
    return record, None


def _valid_session_id(session_id: str) -> bool:
    try:
        validate_session_id(session_id)
    except InvalidSessionId:
        return False
    return True


def _summary(session_id: str, meta: dict[str, str], claim: dict[str, str]) -> SessionSummary:
    owner = meta.get("owner")
    if owner and owner != meta.get("controller") and owner != claim.get("agent"):
        # an agent's claim that lapsed (its key expired): nobody holds the session, whatever
        # meta still says until the next change (issue 17)
        owner = None
    return SessionSummary(
        session_id=session_id,
        status=_text(meta.get("status")) or "active",
        owner=_text(owner),
        controller=_text(meta.get("controller")),
        last_event_id=meta.get("last_id") if is_stream_id(meta.get("last_id")) else None,
        last_event_type=_text(meta.get("last_type")),
        last_activity=_ms(meta.get("last_ms")),
        created=_ms(meta.get("created")),
        taken_at=_ms(meta.get("taken_ms")),
        escalated_at=_ms(meta.get("escalated_ms")),
        escalation_queue=_text(meta.get("esc_queue")),
        claim_agent=_text(claim.get("agent")),
        # stored numbers are parsed defensively: anyone holding REDIS_URL can write these
        claim_token=_int(claim.get("token")) if claim.get("token") else None,
        claim_expires_at=_ms(claim.get("expires")),
        fence=_int(meta.get("fence")) or 0,
        pending_approvals=pending_count(meta),
    )


def _encode_cursor(score: float, member: str) -> str:
    return json.dumps([score, member], separators=(",", ":"))


def _decode_cursor(cursor: str) -> tuple[float, str]:
    # RecursionError: "[[[[..." nested past the parser's limit. Scores issued are finite;
    # NaN would reach Redis as an error.
    try:
        score, member = json.loads(cursor)
        score = float(score)
        if not math.isfinite(score):
            raise ValueError("the score is not finite")
        return score, str(member)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidCursor(f"cursor {cursor[:60]!r} is not one this index issued") from exc


# How long a dashboard process's report counts after it was made (reports come every ~2 s).
WORKER_REPORT_TTL = 15.0


class SessionIndex(RedisBacked):
    """Read side of the core: sessions by activity, status counts, escalations, agents, feed."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        stale_after: float = DEFAULT_STALE_AFTER,
        **options: Any,
    ) -> None:
        super().__init__(redis_url, **options)
        self.stale_after = stale_after
        self._tombstone_cursor = 0

    async def get_session(self, session_id: str) -> SessionSummary | None:
        """The session's summary, or None if it has no events (unknown or expired)."""
        validate_session_id(session_id)
        keys = self.keys.session(session_id)
        meta, claim = await self.read_hashes(keys.meta, keys.claim)
        if not meta:
            return None
        return _summary(session_id, meta, claim)

    async def get_sessions(self, session_ids: list[str]) -> list[SessionSummary]:
        """Summaries of these sessions in one round trip, skipping any that no longer exist."""
        if not session_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                keys = self.keys.session(sid)
                pipe.hgetall(keys.meta)
                pipe.hgetall(keys.claim)
            replies = await self.call(pipe.execute())
        rows = []
        for i, sid in enumerate(session_ids):
            meta, claim = replies[2 * i], replies[2 * i + 1]
            # expired sessions linger in the index until pruned; never show them, nor an id
            # the core would refuse (written into the index around it)
            if meta and _valid_session_id(sid):
                rows.append(_summary(sid, meta, claim))
        return rows

    async def list_sessions(
        self,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        *,
        owner: str | None = None,
        prefix: str | None = None,
    ) -> SessionPage:
        """Sessions, most recently active first (by name when searching by ``prefix``)."""
        limit = max(1, min(int(limit), MAX_PAGE))
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
        if prefix:
            return await self._by_prefix(prefix, cursor, limit, status, owner)
        if owner:
            return await self._by_owner(owner, cursor, limit, status)
        key = self.keys.status[status] if status else self.keys.activity
        # Sessions whose keys expired stay in the index until prune(); they are skipped here
        # (by score: older than the retention; and by reading each), and the page is filled
        # from further on, so no page is empty while a next cursor says there is more.
        rows: list[SessionSummary] = []
        for _ in range(20):
            ids, next_cursor = await self._page_by_score(key, cursor, limit - len(rows))
            rows += await self.get_sessions(ids)
            if len(rows) >= limit or next_cursor is None:
                break
            cursor = next_cursor
        return SessionPage(rows, next_cursor)

    async def _page_by_score(
        self, key: str, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        client = self.redis
        alive_from = self._alive_from()
        if cursor is None:
            rows = await self.call(
                client.zrange(
                    key,
                    "+inf",
                    alive_from,
                    desc=True,
                    byscore=True,
                    offset=0,
                    num=limit + 1,
                    withscores=True,
                )
            )
        else:
            score, member = _decode_cursor(cursor)
            rows, offset = [], 0
            # Members sharing the cursor's score sort by name; skip those already shown.
            while len(rows) <= limit:
                batch = await self.call(
                    client.zrange(
                        key,
                        score,
                        alive_from,
                        desc=True,
                        byscore=True,
                        offset=offset,
                        num=limit + 1,
                        withscores=True,
                    )
                )
                if not batch:
                    break
                offset += len(batch)
                rows += [(m, s) for m, s in batch if s < score or m < member]
        page, more = rows[:limit], len(rows) > limit
        ids = [m for m, _ in page]
        return ids, (_encode_cursor(page[-1][1], page[-1][0]) if more and page else None)

    async def _by_owner(
        self, owner: str, cursor: str | None, limit: int, status: str | None
    ) -> SessionPage:
        validate_agent_id(owner, "owner")
        # An owner holds few sessions at once, so sort that small set by activity here.
        members = await self.call(
            self.redis.zrangebylex(
                self.keys.owners, f"[{owner}\0", f"({owner}\x01", start=0, num=1000
            )
        )
        ids = [m.split("\0", 1)[1] for m in members]
        rows = sorted(
            [s for s in await self.get_sessions(ids) if s.owner == owner],
            key=lambda s: (s.last_activity or 0, s.session_id),
            reverse=True,
        )
        if status:
            rows = [r for r in rows if r.status == status]
        if cursor is not None:
            score, member = _decode_cursor(cursor)
            rows = [r for r in rows if ((r.last_activity or 0), r.session_id) < (score, member)]
        page = rows[:limit]
        more = len(rows) > limit
        return SessionPage(
            page, _encode_cursor(page[-1].last_activity or 0, page[-1].session_id) if more else None
        )

    async def _by_prefix(
        self, prefix: str, cursor: str | None, limit: int, status: str | None, owner: str | None
    ) -> SessionPage:
        start = f"({cursor}" if cursor else f"[{prefix}"
        rows: list[SessionSummary] = []
        more = False
        # Filters are applied to name-ordered batches; a few batches fill a page in practice.
        for _ in range(10):
            names = await self.call(
                self.redis.zrangebylex(
                    self.keys.names, start, f"[{prefix}\U0010ffff", start=0, num=limit + 1
                )
            )
            if not names:
                break
            summaries = await self.get_sessions(names[:limit] if len(names) > limit else names)
            for s in summaries:
                if (status is None or s.status == status) and (owner is None or s.owner == owner):
                    rows.append(s)
            more = len(names) > limit
            start = f"({names[min(len(names), limit) - 1]}"
            if len(rows) >= limit or not more:
                break
        page = rows[:limit]
        next_cursor = page[-1].session_id if (more or len(rows) > limit) and page else None
        return SessionPage(page, next_cursor)

    def _alive_from(self) -> int:
        """The lowest last-activity score (ms) of a session whose keys can still exist: each
        event slides the session's expiry to its time plus the retention (to within a second,
        scripts.PRELUDE), so older entries are sessions prune() has not reached yet."""
        return int(self.clock() * 1000) - self.retention_ms

    async def counts_by_status(self) -> dict[str, int]:
        """Sessions per status, without those whose retention has run out (issue 17: they
        stayed counted until prune() reached them)."""
        alive_from = self._alive_from()
        async with self.redis.pipeline(transaction=False) as pipe:
            for s in STATUSES:
                pipe.zcount(self.keys.status[s], alive_from, "+inf")
            counts = await self.call(pipe.execute())
        return dict(zip(STATUSES, counts, strict=True))

    async def escalation_queue(self, limit: int = 50) -> list[SessionSummary]:
        """Escalated sessions, the longest waiting first."""
        ids = await self.call(
            self.redis.zrange(self.keys.escalations, 0, max(1, min(limit, MAX_PAGE)) - 1)
        )
        return await self.get_sessions(ids)

    async def escalation_count(self) -> int:
        return await self.call(self.redis.zcard(self.keys.escalations))

    async def pending_approvals(self, limit: int = 50, cursor: str | None = None) -> ApprovalPage:
        """Pending approvals of every session, the longest waiting first.

        Each queue entry is checked against its session's record: on a Cluster a decision's
        removal may reach the queue before the request's entry does, and a session's keys may
        have expired or been cleared. Entries whose approval is no longer pending are dropped
        from the queue here.
        """
        limit = max(1, min(int(limit), MAX_PAGE))
        client = self.redis
        key = self.keys.approvals
        after = _decode_cursor(cursor) if cursor is not None else None
        low = "-inf" if after is None else after[0]
        rows: list[Approval] = []
        last: tuple[float, str] | None = None
        more = False
        offset = 0
        for _ in range(20):  # stale entries are few; this bounds the work of one call
            raw_batch = await self.call(
                client.zrange(
                    key, low, "+inf", byscore=True, offset=offset, num=limit + 1, withscores=True
                )
            )
            offset += len(raw_batch)
            batch = [
                (m, sc) for m, sc in raw_batch if after is None or sc > after[0] or m > after[1]
            ]
            pairs = [(m, sc, queue_member(m) or ("", "")) for m, sc in batch]
            async with client.pipeline(transaction=False) as pipe:
                for _m, _sc, (sid, aid) in pairs:
                    if sid:
                        pipe.hget(self.keys.session(sid).approvals, aid)
                    else:
                        pipe.exists(key)  # a placeholder reply: the entry is dropped below
                # a session's approvals key of the wrong type (SET by anyone holding
                # REDIS_URL) is that entry's problem only: its reply is an error, dropped below
                replies = await self.call(pipe.execute(raise_on_error=False)) if pairs else []
            stale = []
            for (member, score, (sid, aid)), raw in zip(pairs, replies, strict=True):
                approval = approval_from_record(sid, raw) if sid and isinstance(raw, str) else None
                if approval is None or not approval.pending or approval.approval_id != aid:
                    stale.append(member)
                elif len(rows) < limit:
                    rows.append(approval)
                    last = (score, member)
                else:
                    more = True
                    break
            if stale:
                await self.call(client.zrem(key, *stale))
                offset -= len(stale)
            if more or len(raw_batch) <= limit:
                break
        next_cursor = _encode_cursor(*last) if more and last is not None else None
        return ApprovalPage(rows, next_cursor)

    async def approval_count(self) -> int:
        """Pending approvals in the queue (entries not yet checked may include a few that were
        decided meanwhile; ``pending_approvals`` drops those)."""
        return await self.call(self.redis.zcard(self.keys.approvals))

    async def events_per_minute(self) -> int:
        """Events in the last 60 seconds, interpolated from per-minute counters."""
        now_ms = int(time.time() * 1000)
        minute = now_ms // 60000
        current, previous = await self.call(
            self.redis.hmget(self.keys.stats, [str(minute), str(minute - 1)])
        )
        elapsed = (now_ms % 60000) / 60000
        # counters anyone with REDIS_URL can overwrite: what does not parse counts as 0
        return int((_int(current) or 0) + (_int(previous) or 0) * (1 - elapsed))

    async def counters(self) -> dict[str, int]:
        """The monotonic counters (``events:<type>``, ``claims:won``, ...), since they began."""
        raw = await self.call(self.redis.hgetall(self.keys.counters))
        counts = {field: _int(value) for field, value in raw.items()}
        return {field: value for field, value in counts.items() if value is not None}

    async def add_to_counter(self, field: str, amount: int = 1) -> None:
        await self.call(self.redis.hincrby(self.keys.counters, field, amount))

    async def report_worker(self, worker_id: str, figures: dict[str, int]) -> None:
        """Record one dashboard process's own figures (its open websockets, say); readers
        ignore a report older than ``WORKER_REPORT_TTL`` (the process has gone)."""
        record = json.dumps({**figures, "ms": int(time.time() * 1000)})
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.workers, worker_id, record)
            pipe.pexpire(self.keys.workers, int(WORKER_REPORT_TTL * 1000))
            await self.call(pipe.execute())

    async def worker_reports(self) -> dict[str, dict[str, int]]:
        """The live processes' latest reports; stale ones are deleted on the way."""
        raw = await self.call(self.redis.hgetall(self.keys.workers))
        cutoff = (time.time() - WORKER_REPORT_TTL) * 1000
        live, stale = {}, []
        for worker_id, record in raw.items():
            figures, _why = presence_record(record)
            figures = {k: v for k, v in figures.items() if type(v) is int}
            if figures.pop("ms", 0) < cutoff:
                stale.append(worker_id)
            else:
                live[worker_id] = figures
        if stale:
            await self.call(self.redis.hdel(self.keys.workers, *stale))
        return live

    async def agents(self, limit: int = 100) -> list[AgentPresence]:
        """Agents by last sign of life (AGENT_READY or heartbeat), most recent first."""
        client = self.redis
        seen = await self.call(
            client.zrange(
                self.keys.agents_seen, 0, max(1, min(limit, 1000)) - 1, desc=True, withscores=True
            )
        )
        if not seen:
            return []
        ids = [a for a, _ in seen]
        async with client.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.agents, ids)
            for agent_id in ids:
                pipe.zlexcount(self.keys.owners, f"[{agent_id}\0", f"({agent_id}\x01")
            replies = await self.call(pipe.execute())
        records, held = replies[0], replies[1:]
        now = time.time()
        result = []
        for (agent_id, score), raw, count in zip(seen, records, held, strict=True):
            # Agents write these records (and can write them straight into Redis): every
            # field is normalised here, so one bad announcement cannot break a page.
            record, invalid = presence_record(raw)
            last_seen = _seconds(score / 1000.0) or 0.0
            result.append(
                AgentPresence(
                    agent_id=_text(agent_id) or "(empty)",
                    capabilities=(
                        [invalid] if invalid else presence_capabilities(record.get("capabilities"))
                    ),
                    load=presence_load(record.get("load")),
                    last_seen=last_seen,
                    sessions_held=int(count),
                    stale=now - last_seen > self.stale_after,
                    extra=record,
                )
            )
        return result

    async def heartbeat(self, agent_id: str, *, load: float | None = None) -> None:
        """Record that ``agent_id`` is alive (and its load) without writing an event."""
        validate_agent_id(agent_id)
        load_json = "" if load is None else encode_json(load, "load")
        await self.call(
            heartbeat_script(
                self.redis, [self.keys.agents, self.keys.agents_seen], [agent_id, load_json]
            )
        )

    async def read_feed(
        self, after: str = "0", *, count: int = 500, block: float | None = None
    ) -> list[FeedEntry]:
        """Events of every session after feed id ``after`` (``"$"``: only new ones), in order."""
        if after != "$":
            validate_event_id(after, "feed cursor")
        block_ms = None if block is None else max(1, int(block * 1000))
        reply = await self.call_blocking(
            self.redis.xread({self.keys.feed: after}, count=count, block=block_ms)
        )
        if not reply:
            return []
        entries = []
        for feed_id, fields in reply[0][1]:
            # an entry written around the core may name no valid event id: it keeps its place
            event_id = fields.get("e")
            event_id = event_id if is_stream_id(event_id) else feed_id
            entries.append(
                FeedEntry(feed_id, event_from_fields(fields.get("s", ""), event_id, fields))
            )
        return entries

    async def latest_feed_id(self) -> str:
        newest = await self.call(self.redis.xrevrange(self.keys.feed, "+", "-", count=1))
        return newest[0][0] if newest else "0-0"

    async def prune(self, batch: int = 1000, max_seconds: float = 2.0) -> int:
        """Drop index entries of sessions idle past the retention whose keys have expired (a
        session kept alive by a longer retention elsewhere is left alone and skipped, so it
        cannot hold prune up). Pages of ``batch`` sessions until none is left or
        ``max_seconds`` have passed, so pruning keeps up with expiry (it used to clear one page
        per call: 12,000 sessions an hour from the relay, issue 17). Readers already leave
        expired sessions out; this reclaims the index's memory. Returns how many were cleared."""
        cutoff = int(self.clock() * 1000) - self.retention_ms
        stop_at = time.monotonic() + max_seconds
        cleared = skipped = 0
        while True:
            ids = await self.call(
                self.redis.zrange(
                    self.keys.activity, "-inf", cutoff, byscore=True, offset=skipped, num=batch
                )
            )
            if not ids:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid in ids:
                    pipe.exists(self.keys.session(sid).meta)
                alive = await self.call(pipe.execute())
            gone = [sid for sid, exists in zip(ids, alive, strict=True) if not exists]
            skipped += len(ids) - len(gone)
            for sid in gone:
                # only if still expired: an agent may have written to the id since the check
                if await self._run(clear_session_script, sid, "1", op_id="") != -1:
                    cleared += 1
            if len(ids) < batch or time.monotonic() > stop_at:
                break
        if is_cluster(self.redis):
            await self._prune_tombstones(cutoff, batch)
        return cleared

    async def _prune_tombstones(self, cutoff_ms: int, batch: int) -> None:
        """Cluster mode: a cleared session leaves ``[last id, "", ""]`` in the applied-state
        hash, so that a late index update from before the clear cannot bring it back. Such
        updates wait in the session's outbox, so a record goes once it is past the retention
        and its outbox has expired (which is a retention after the clear, and may be later
        than the last event: pruned while entries were still there, an outbox whose clear
        went unacknowledged had them applied a second time). One HSCAN page per call."""
        cursor, fields = await self.call(
            self.redis.hscan(self.keys.applied, self._tombstone_cursor, count=batch)
        )
        self._tombstone_cursor = cursor
        stale = []
        for sid, raw in fields.items():
            record = json.loads(raw)  # [last id, status, owner(, last outbox entry)]
            last_id, status = record[0], record[1]
            if status == "" and int(last_id.partition("-")[0]) < cutoff_ms:
                stale.append(sid)
        if stale:
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid in stale:
                    pipe.exists(self.keys.session(sid).outbox)
                outboxes = await self.call(pipe.execute())
            stale = [sid for sid, left in zip(stale, outboxes, strict=True) if not left]
        if stale:
            await self.call(self.redis.hdel(self.keys.applied, *stale))
