"""``AgentCoordinator``: one session's events, shared state, escalation and human control."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .approvals import ApprovalsMixin
from .base import CLUSTER_RETRY_SECONDS, DEFAULT_CLAIM_TTL, RedisBacked, caller_op_id, lease_ms
from .calls import command, fast_pool
from .connection import is_cluster
from .errors import (
    CorruptStoredValue,
    InvalidCursor,
    NotHumanControlled,
    NotOwner,
    RedisUnavailable,
    ReservedEventType,
    SessionClosed,
    SessionTakenOver,
    VersionConflict,
)
from .events import (
    RESERVED_TYPES,
    Event,
    EventType,
    decode_stored_json,
    encode_json,
    encode_payload,
    event_from_fields,
    events_from_entries,
)
from .keys import (
    validate_actor,
    validate_agent_id,
    validate_queue,
    validate_session_id,
    validate_state_key,
)
from .scripts import (
    clear_session_script,
    handback_script,
    publish_script,
    takeover_script,
    update_state_script,
)

_EVENT_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")  # ASCII digits: \d takes any script
_MAX_ID_PART = 2**64 - 1  # Redis refuses larger stream id parts

SUBSCRIBE_BATCH = 200
# Blocking reads wait at most this long per round trip, so a dead server is noticed.
MAX_BLOCK_SECONDS = 5.0


def validate_event_id(event_id: str, what: str = "event id") -> str:
    match = _EVENT_ID.fullmatch(event_id) if isinstance(event_id, str) else None
    if match is None or any(int(part or 0) > _MAX_ID_PART for part in match.groups()):
        raise InvalidCursor(f"{what} {event_id!r} is not a stream id like '1700000000000-0'")
    return event_id


def _id_parts(event_id: str, what: str) -> tuple[int, int | None]:
    """A valid stream id's parts; the sequence is None when the id has none ("1700000000000")."""
    ms, _, seq = validate_event_id(event_id, what).partition("-")
    return int(ms), int(seq) if seq else None


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE: Any = _Delete()


class AgentCoordinator(ApprovalsMixin, RedisBacked):
    """Publish and read one session's events, keep its shared state, and hand it to humans.

    ``AgentCoordinator(session_id, redis_url=None)`` connects lazily; ``source`` names the
    agent publishing through it and is stored with every event it writes.
    """

    def __init__(
        self,
        session_id: str,
        redis_url: str | None = None,
        *,
        source: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(redis_url, **options)
        self.session_id = validate_session_id(session_id)
        self.source = validate_agent_id(source, "source") if source is not None else None
        self._keys = self.keys.session(self.session_id)

    def __repr__(self) -> str:
        return f"AgentCoordinator(session_id={self.session_id!r}, namespace={self.namespace!r})"

    # -- events ---------------------------------------------------------------------------

    async def publish(
        self,
        event_type: EventType | str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str | None = None,
        guard: bool = False,
        idempotency_key: str | None = None,
    ) -> Event:
        """Append an event to the session; listeners receive it, late ones included.

        With ``guard=True`` (for agents) the event is refused with ``SessionTakenOver``,
        in the same atomic step, while a human controls the session.

        ``idempotency_key`` makes a retry safe: a publish to this session with a key it has
        seen returns the event the first one stored (or its refusal) and stores nothing. A
        key is remembered for at least 10 minutes and the session's next 1,000 operations
        (``scripts.OP_WINDOW_MS``, ``OP_CAP``).
        """
        etype = EventType.coerce(event_type)
        if etype in RESERVED_TYPES:
            raise ReservedEventType(
                f"{etype.value} events are published by the operation that makes the change "
                "(claim_handoff, release_handoff, reassign_handoff, take_over, hand_back, set_state, "
                "request_approval, decide)"
            )
        op_id = caller_op_id("publish", idempotency_key) if idempotency_key is not None else None
        event = await self._publish(
            etype, data, source, strict_close=False, guard=guard, op_id=op_id
        )
        if op_id is not None:
            # the first call's event, which a retry with other data must not misreport
            rows = await self.call(self.redis.xrange(self._keys.events, event.id, event.id))
            if rows:
                return event_from_fields(self.session_id, rows[0][0], rows[0][1])
        return event

    async def _publish(
        self,
        etype: EventType,
        data: Mapping[str, Any] | None,
        source: str | None,
        strict_close: bool,
        guard: bool = False,
        op_id: str | None = None,
    ) -> Event:
        payload = dict(data) if data is not None else {}
        text = encode_payload(payload, self.max_payload_bytes)
        src = validate_agent_id(source, "source") if source is not None else (self.source or "")
        presence_id, presence = "", ""
        if etype is EventType.AGENT_READY:
            presence_id, presence = self._presence(payload, src)
        queue = validate_queue(payload.get("queue")) if etype is EventType.ESCALATED else ""
        result = await self._run(
            publish_script,
            self.session_id,
            etype.value,
            text,
            src,
            presence_id,
            presence,
            "1" if strict_close else "0",
            "1" if guard else "0",
            queue,
            op_id=op_id,
        )
        if result[0] == 0:
            if result[1] == "human":
                raise SessionTakenOver(self.session_id, result[2], _seconds(result[3]))
            raise SessionClosed(self.session_id)
        entry_id = result[1]
        return Event(
            id=entry_id,
            type=etype,
            data=payload,
            session_id=self.session_id,
            timestamp=int(entry_id.split("-", 1)[0]) / 1000.0,
            source=src or None,
        )

    def _presence(self, payload: dict[str, Any], source: str) -> tuple[str, str]:
        agent_id = payload.get("agent_id") or source
        if not agent_id:
            return "", ""
        agent_id = validate_agent_id(str(agent_id))
        record = {
            "agent_id": agent_id,
            "capabilities": payload.get("capabilities") or [],
            "load": payload.get("load"),
            "session_id": self.session_id,
            "ready_ms": int(time.time() * 1000),
        }
        return agent_id, json.dumps(record, separators=(",", ":"))

    async def events(
        self,
        *,
        after: str = "-",
        limit: int = 100,
        newest_first: bool = False,
        before: str | None = None,
    ) -> list[Event]:
        """A page of the session's stored events (oldest first unless ``newest_first``)."""
        limit = max(1, min(int(limit), 1000))
        if newest_first:
            if before is not None and _id_parts(before, "before") == (0, 0):
                return []  # nothing is older than 0-0 (and Redis refuses the interval)
            start = "+" if before is None else f"({validate_event_id(before, 'before')}"
            rows = await self.call(self.redis.xrevrange(self._keys.events, start, "-", count=limit))
        else:
            if after != "-" and _id_parts(after, "after") == (_MAX_ID_PART, _MAX_ID_PART):
                return []  # nothing is newer than the largest id (and Redis refuses it)
            start = "-" if after == "-" else f"({validate_event_id(after, 'after')}"
            rows = await self.call(self.redis.xrange(self._keys.events, start, "+", count=limit))
        return [event_from_fields(self.session_id, eid, fields) for eid, fields in rows]

    async def event_count(self) -> int:
        return await self.call(self.redis.xlen(self._keys.events))

    async def subscribe(
        self,
        timeout: float | None = None,
        *,
        types: Iterable[EventType | str] | None = None,
        since: str = "0",
    ) -> AsyncIterator[Event]:
        """Yield the session's events: those already published, then live ones, each once.

        ``timeout`` is how many seconds may pass without an event before the iteration ends
        normally (so a ``for ... else`` runs). ``since`` is an event id to resume after,
        ``"0"`` for the whole backlog (the default) or ``"$"`` for new events only.
        """
        wanted = {EventType.coerce(t) for t in types} if types is not None else None
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be zero or more seconds")
        cursor = await self._resolve_since(since)
        client = self.redis
        pool = fast_pool(client)
        key = self._keys.events
        session_id = self.session_id
        loop_clock = time.monotonic
        last_event_at = loop_clock()
        failing_since, retry_delay = 0.0, 0.05
        while True:
            if timeout is None:
                block_ms = int(MAX_BLOCK_SECONDS * 1000)
            else:
                remaining = timeout - (loop_clock() - last_event_at)
                if remaining <= 0:
                    return
                block_ms = max(1, int(min(remaining, MAX_BLOCK_SECONDS) * 1000))
            if pool is not None:  # the hot path: no per-command wrapper
                reply = await self.call_blocking(
                    command(
                        pool,
                        "XREAD",
                        "COUNT",
                        SUBSCRIBE_BATCH,
                        "BLOCK",
                        block_ms,
                        "STREAMS",
                        key,
                        cursor,
                    )
                )
            else:
                try:
                    reply = await self.call_blocking(
                        client.xread({key: cursor}, count=SUBSCRIBE_BATCH, block=block_ms)
                    )
                except RedisUnavailable:
                    if not is_cluster(client):
                        raise
                    # a Cluster failing over: read again (a new shared client if this one
                    # is broken) from the same cursor, for up to CLUSTER_RETRY_SECONDS
                    now = loop_clock()
                    failing_since = failing_since or now
                    if now - failing_since > CLUSTER_RETRY_SECONDS:
                        raise
                    await asyncio.sleep(retry_delay)
                    retry_delay = min(retry_delay * 2, 1.0)
                    client = self._heal(client)
                    continue
                failing_since, retry_delay = 0.0, 0.05
            if not reply:
                continue
            entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
            if not entries:
                continue
            if isinstance(entries[0], list) and len(entries[0]) == 1:
                entries = entries[0]  # RESP3 (protocol=3 in the URL) nests once more
            cursor = entries[-1][0]
            # The batch is decoded in one call, not one per event (issue 18: reading a backlog
            # is mostly this); entries come as Redis sends them on the hot path, with fields
            # as dicts from redis-py's client otherwise.
            if pool is not None:
                events = events_from_entries(session_id, entries, wanted)
            else:
                events = [event_from_fields(session_id, i, f) for i, f in entries]
                if wanted is not None:
                    events = [e for e in events if e.type in wanted]
            for event in events:
                yield event
            if events:
                # the caller came back for more after the last one: the timeout counts from here
                last_event_at = loop_clock()

    async def _resolve_since(self, since: str) -> str:
        if since == "$":
            newest = await self.call(self.redis.xrevrange(self._keys.events, "+", "-", count=1))
            return newest[0][0] if newest else "0-0"
        return validate_event_id(since, "since")

    # -- shared state ---------------------------------------------------------------------

    async def set_state(
        self, key: str, value: Any, *, expected_version: int | None = None, by: str | None = None
    ) -> int:
        """Set one key of the session's shared state; returns its new version."""
        versions = await self._update_state({key: value}, {key: expected_version}, by)
        return versions[key]

    async def update_state(
        self,
        mapping: Mapping[str, Any],
        *,
        expected_versions: Mapping[str, int] | None = None,
        by: str | None = None,
    ) -> dict[str, int]:
        """Set several keys at once: all are written, or (on a version conflict) none.

        A value of ``DELETE`` removes that key. An expected version of 0 means "must not exist".
        """
        return await self._update_state(dict(mapping), dict(expected_versions or {}), by)

    async def delete_state(
        self, key: str, *, expected_version: int | None = None, by: str | None = None
    ) -> bool:
        """Remove a key; returns False when it did not exist."""
        versions = await self._update_state({key: DELETE}, {key: expected_version}, by)
        return key in versions

    async def _update_state(
        self, mapping: dict[str, Any], expected: dict[str, int | None], by: str | None
    ) -> dict[str, int]:
        if not mapping:
            return {}
        args: list[Any] = []
        for key, value in mapping.items():
            validate_state_key(key)
            text = (
                ""
                if value is DELETE
                else encode_json(value, f"state[{key!r}]", self.max_payload_bytes)
            )
            version = expected.get(key)
            if version is not None and (not isinstance(version, int) or version < 0):
                raise ValueError(f"expected version for {key!r} must be a non-negative int")
            args += [key, text, "" if version is None else version]
        src = validate_agent_id(by, "by") if by is not None else (self.source or "")
        result = await self._run(update_state_script, self.session_id, src, len(mapping), *args)
        if result[0] == 0:
            _, key, actual, raw = result
            current, _ = decode_stored_json(raw)  # shown as stored, even if not JSON
            raise VersionConflict(self.session_id, key, expected[key], int(actual), current)
        pairs = result[1:]
        return {pairs[i]: int(pairs[i + 1]) for i in range(0, len(pairs), 2)}

    async def get_state(self, key: str, default: Any = None) -> Any:
        validate_state_key(key)
        client = self.redis
        pool = fast_pool(client)
        if pool is not None:
            raw = await self.call(command(pool, "HGET", self._keys.state, key))
        else:
            raw = await self.call(client.hget(self._keys.state, key))
        return default if raw is None else self._state_value(key, raw)

    async def get_all_state(self) -> dict[str, Any]:
        raw = await self.call(self.redis.hgetall(self._keys.state))
        return {k: self._state_value(k, v) for k, v in sorted(raw.items())}

    async def get_state_versions(self, *, keep_invalid: bool = False) -> dict[str, tuple[Any, int]]:
        """Every key with its value and version, read in one atomic step (for editors).

        A value written around the core that is not JSON raises ``CorruptStoredValue``, or
        with ``keep_invalid=True`` comes back as an ``InvalidStoredValue`` holding the text, so
        an editor can show it and let a person replace or delete it.
        """
        values, versions = await self.read_hashes(self._keys.state, self._keys.versions)
        return {
            k: (
                self._state_value(k, v, keep_invalid),
                _version(self.session_id, k, versions.get(k), keep_invalid),
            )
            for k, v in sorted(values.items())
        }

    def _state_value(self, key: str, raw: str, keep_invalid: bool = False) -> Any:
        """A stored state value; one written around the core (not JSON) raises a
        ``CorruptStoredValue`` naming the key, never a bare decoding error."""
        value, why = decode_stored_json(raw)
        if why is None:
            return value
        if keep_invalid:
            return InvalidStoredValue(value, why)
        raise CorruptStoredValue(self.session_id, f"state[{key[:80]!r}]", why)

    # -- escalation and human control -----------------------------------------------------

    async def escalate(
        self, reason: str, data: Mapping[str, Any] | None = None, *, source: str | None = None
    ) -> Event:
        """Ask for a human: the session joins the escalation queue (oldest first)."""
        payload = {"reason": reason, **(dict(data) if data else {})}
        return await self._publish(EventType.ESCALATED, payload, source, strict_close=False)

    async def close(self, *, by: str | None = None, reason: str | None = None) -> Event:
        """Close the session: the claim ends, it leaves the queue. Closing twice is an error."""
        payload = {"reason": reason, "by": by}
        return await self._publish(EventType.SESSION_CLOSED, payload, by, strict_close=True)

    async def take_over(self, supervisor: str, *, reason: str | None = None) -> bool:
        """Make ``supervisor`` the session's controller; agents' claims end and are refused.

        Returns True when this call took control, False when ``supervisor`` already held it.
        Raises ``SessionTakenOver`` naming the holder when someone else controls the session.
        """
        validate_agent_id(supervisor, "supervisor")
        reason_json = encode_json(reason, "reason", self.max_payload_bytes)
        code, controller, taken_ms = await self._run(
            takeover_script, self.session_id, supervisor, reason_json
        )
        if code == -1:
            raise SessionClosed(self.session_id)
        if code == 0:
            raise SessionTakenOver(self.session_id, controller, _seconds(taken_ms))
        return code == 1

    async def hand_back(
        self,
        to_agent: str | None = None,
        *,
        by: str | None = None,
        expected_controller: str | None = None,
        ttl: float = DEFAULT_CLAIM_TTL,
        resolution: str | None = None,
    ) -> bool:
        """End human control; the session goes to ``to_agent`` (claimed for it) or the queue.

        ``resolution`` is what the human decided ("refund approved"): it travels in the
        ``human_handback`` event so the agent that continues can act on it instead of asking
        again."""
        if to_agent is not None:
            validate_agent_id(to_agent)
        by_text = validate_actor(by, "by")
        expect = (
            "0"
            if expected_controller is None
            else "1" + validate_actor(expected_controller, "controller")
        )
        ttl_ms = lease_ms(ttl)
        resolution_json = (
            ""
            if resolution is None
            else encode_json(resolution, "resolution", self.max_payload_bytes)
        )
        result = await self._run(
            handback_script,
            self.session_id,
            to_agent or "",
            ttl_ms,
            by_text,
            expect,
            resolution_json,
        )
        if result[0] == 0:
            if result[1] == "not_human":
                raise NotHumanControlled(self.session_id)
            raise NotOwner(self.session_id, expected_controller or "", result[2])
        return True

    async def controller(self) -> str | None:
        """The human controlling the session, or None."""
        value = await self.call(self.redis.hget(self._keys.meta, "controller"))
        return value or None

    async def is_human_controlled(self) -> bool:
        return await self.controller() is not None

    async def clear(self) -> None:
        """Remove the session's events, state, claim, approvals, saved runs and index entries
        in one atomic step.

        Where a script may be sent again (Redis Cluster, Sentinel, a caller's client) it
        carries an operation id, so a retry after a lost answer cannot clear the session a
        second time once an agent has written to it again. The outcomes of the session's
        recent operations outlive the clear for up to 2 x the op window (a retry across it
        must find them), and on a Cluster the outbox's numbering for a retention
        (docs/reliability.md)."""
        await self._run(clear_session_script, self.session_id, "")


@dataclass(frozen=True, slots=True)
class InvalidStoredValue:
    """A state value that is not JSON, as stored (cut to 1,000 characters when huge)."""

    text: str
    reason: str


def _version(session_id: str, key: str, raw: str | None, keep_invalid: bool = False) -> int:
    try:
        return int(raw or 0)
    except ValueError:
        if keep_invalid:
            return 0  # a compare-and-set against it fails, and the editor says so
        raise CorruptStoredValue(
            session_id, f"the version of state[{key[:80]!r}]", f"{raw[:40]!r} is not a number"
        ) from None


def _seconds(ms: str | int | None) -> float | None:
    return int(ms) / 1000.0 if ms not in (None, "") else None
