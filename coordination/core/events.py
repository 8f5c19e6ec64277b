"""Event types, the ``Event`` record, and the one place where payloads become JSON."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .errors import PayloadNotJSON, PayloadTooLarge, UnknownEventType

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 100


class EventType(StrEnum):
    """What happened in a session. Values are the lowercase names, as upstream uses them."""

    AGENT_READY = "agent_ready"
    AGENT_STARTED = "agent_started"
    AGENT_COMPLETED = "agent_completed"
    HANDOFF_READY = "handoff_ready"
    HANDOFF_CLAIMED = "handoff_claimed"
    HANDOFF_RELEASED = "handoff_released"
    HANDOFF_REASSIGNED = "handoff_reassigned"
    STATE_CHANGED = "state_changed"
    TOOL_RESULT = "tool_result"
    ESCALATED = "escalated"
    HUMAN_TAKEOVER = "human_takeover"
    HUMAN_HANDBACK = "human_handback"
    MESSAGE = "message"
    NOTE = "note"
    SESSION_CLOSED = "session_closed"
    ERROR = "error"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_DECIDED = "approval_decided"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def coerce(cls, value: EventType | str) -> EventType:
        """Accept an ``EventType`` or one of its values; anything else lists the valid ones."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        valid = ", ".join(e.value for e in cls)
        raise UnknownEventType(f"unknown event type {value!r}; valid types are: {valid}")


# These change who holds a session; only the atomic operations may publish them, so the
# event log can never claim a change that did not happen.
RESERVED_TYPES = frozenset(
    {
        EventType.HANDOFF_CLAIMED,
        EventType.HANDOFF_RELEASED,
        EventType.HANDOFF_REASSIGNED,
        EventType.HUMAN_TAKEOVER,
        EventType.HUMAN_HANDBACK,
        EventType.STATE_CHANGED,
        # an approval's record, counter and queue entry change with these (request_approval,
        # decide): a hand-written one would announce a request nobody can decide
        EventType.APPROVAL_REQUESTED,
        EventType.APPROVAL_DECIDED,
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a session's event stream."""

    id: str
    type: EventType | str
    data: dict[str, Any]
    session_id: str
    timestamp: float
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def timestamp_ms(self) -> int:
        return int(self.id.split("-", 1)[0])

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": str(self.type),
            "data": self.data,
            "session_id": self.session_id,
            "timestamp": self.timestamp,
            "source": self.source,
        }


def event_from_fields(session_id: str, entry_id: str, fields: dict[str, str]) -> Event:
    """Build an ``Event`` from a stream entry written by the core's scripts."""
    raw_type = fields.get("t", "")
    try:
        etype: EventType | str = EventType(raw_type)
    except ValueError:
        etype = raw_type  # written by a newer version: keep it readable, never drop it
    return Event(
        id=entry_id,
        type=etype,
        data=json.loads(fields.get("d") or "{}"),
        session_id=session_id,
        timestamp=int(entry_id.split("-", 1)[0]) / 1000.0,
        source=fields.get("src") or None,
    )


def _check_json_value(value: Any, where: str) -> None:
    """Refuse anything that would not come back from JSON exactly as it went in."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if item is None or isinstance(item, (bool, str, int)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise PayloadNotJSON(f"{path} is {item!r}, which JSON cannot represent")
            continue
        if depth >= MAX_JSON_DEPTH:
            raise PayloadNotJSON(f"{path} is nested deeper than {MAX_JSON_DEPTH} levels")
        if type(item) is list:
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
        elif type(item) is dict:
            for k, v in item.items():
                if not isinstance(k, str):
                    raise PayloadNotJSON(
                        f"{path} has the key {k!r} of type {type(k).__name__}; JSON keys are strings"
                    )
                stack.append((v, f"{path}.{k}", depth + 1))
        else:
            raise PayloadNotJSON(
                f"{path} is a {type(item).__name__}, which is not JSON "
                "(use dict, list, str, int, float, bool or None)"
            )


def encode_json(value: Any, where: str, limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    """Validate ``value`` and return its compact JSON text, refusing it when over ``limit``."""
    _check_json_value(value, where)
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates cannot be UTF-8; escaped they still round-trip exactly.
        text = json.dumps(value, separators=(",", ":"))
        size = len(text)
    if size > limit:
        raise PayloadTooLarge(size, limit, where)
    return text


def encode_payload(data: Any, limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    if data is None:
        return "{}"
    if not isinstance(data, dict):
        raise PayloadNotJSON(f"event data must be a dict, not {type(data).__name__}")
    return encode_json(data, "data", limit)
