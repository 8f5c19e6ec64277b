"""Event types, the ``Event`` record, and the one place where payloads become JSON."""

from __future__ import annotations

import json
import math
import re
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


_new_object = object.__new__
(_set_id, _set_type, _set_data, _set_session_id, _set_timestamp, _set_source, _set_extra) = (
    Event.__dict__[name].__set__
    for name in ("id", "type", "data", "session_id", "timestamp", "source", "extra")
)


def _event(
    id: str, type: EventType | str, data: dict, session_id: str, timestamp: float, source
) -> Event:
    """``Event(...)`` through its slots: a frozen dataclass's ``__init__`` sets each field with
    ``object.__setattr__`` (1.19 us against 0.50 here), which reading a backlog pays per event.
    The instance is the same (its type, fields, equality, immutability)."""
    event = _new_object(Event)
    _set_id(event, id)
    _set_type(event, type)
    _set_data(event, data)
    _set_session_id(event, session_id)
    _set_timestamp(event, timestamp)
    _set_source(event, source)
    _set_extra(event, {})
    return event


_SURROGATE = re.compile("[\ud800-\udfff]")
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
# Over this many characters a stored payload is not decoded at all (the core writes at most
# ``max_payload_bytes``; anything much larger was written around it, straight into Redis).
MAX_STORED_PAYLOAD_CHARS = 16 * DEFAULT_MAX_PAYLOAD_BYTES
INVALID_PAYLOAD_KEY = "(invalid payload)"


def clean_text(value: str) -> str:
    """``value`` with lone surrogates replaced by U+FFFD. JSON's ``"\\ud800"`` escapes decode
    to them, and they cannot be encoded as UTF-8: a page or a frame holding one fails."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", value)
    return value


def decode_stored_json(raw: str | None, default: Any = None) -> tuple[Any, str | None]:
    """Decode JSON read from Redis without trusting it: ``(value, None)``, or ``(raw text,
    reason)`` when it is not JSON (agents can write any key directly)."""
    if raw is None or raw == "":
        return default, None
    if len(raw) > MAX_STORED_PAYLOAD_CHARS:
        return raw[:1000], f"{len(raw)} characters, more than any value the core writes"
    try:
        return loads(raw), None
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        return raw, f"not JSON ({type(exc).__name__})"


_scan_once = json.JSONDecoder().scan_once


def loads(text: str) -> Any:
    """``json.loads(text)``, the same value or the same error for every input, in half the
    time for text the core wrote (compact, nothing around it): the C scanner is called
    directly, without ``json.loads``'s two Python frames and whitespace matches (1.4 against
    0.66 us for a small payload, issue 18). Anything else (surrounding whitespace, extra
    data, an error) is left to ``json.loads`` itself."""
    try:
        value, end = _scan_once(text, 0)
    except (StopIteration, ValueError):
        return json.loads(text)
    if end != len(text):
        return json.loads(text)
    return value


def _timestamp(entry_id: str) -> float:
    try:
        return int(entry_id.split("-", 1)[0]) / 1000.0
    except (ValueError, OverflowError):
        return 0.0


def event_from_fields(session_id: str, entry_id: str, fields: dict[str, str]) -> Event:
    """Build an ``Event`` from a stream entry, whoever wrote it. Entries written around the
    core (raw XADD) may hold anything: a payload that is not a JSON object is kept under
    ``INVALID_PAYLOAD_KEY`` (and ``extra["invalid"]`` says why), never raised."""
    raw_type = fields.get("t", "")
    raw_type = raw_type if isinstance(raw_type, str) else str(raw_type)
    try:
        etype: EventType | str = EventType(raw_type)
    except ValueError:
        etype = raw_type  # written by a newer version: keep it readable, never drop it
    data, why = decode_stored_json(fields.get("d"), {})
    if why is None and not isinstance(data, dict):
        why = f"a JSON {type(data).__name__}, not an object"
    extra: dict[str, Any] = {}
    if why is not None:
        data, extra = {INVALID_PAYLOAD_KEY: data}, {"invalid": why}
    source = fields.get("src") or None
    return Event(
        id=entry_id,
        type=etype,
        data=data,
        session_id=session_id,
        timestamp=_timestamp(entry_id),
        source=source if isinstance(source, str) or source is None else str(source),
        extra=extra,
    )


_TYPES = {t.value: t for t in EventType}
_SOURCE_FIELDS = ("src", "op")


def event_from_flat(session_id: str, entry_id: str, flat: list) -> Event:
    """``event_from_fields`` for an entry as Redis sends it (``[field, value, ...]``)."""
    return events_from_entries(session_id, ((entry_id, flat),))[0]


def events_from_entries(
    session_id: str, entries, wanted: frozenset | set | None = None
) -> list[Event]:
    """The events of XREAD/XRANGE entries as Redis sends them (``(id, [field, value, ...])``),
    those of a type in ``wanted`` only when it is given, decoded as ``event_from_fields``
    decodes them. The shape the core writes (``t``, ``d``, and optionally ``src``) holding a
    known type and a JSON object is decoded in this one loop, without a dict per entry or a
    call per event (reading a backlog is mostly this, issue 18); anything else, including
    entries written around the core, takes ``event_from_fields``, which keeps what it cannot
    read instead of raising."""
    events: list[Event] = []
    append = events.append
    types, scan, limit = _TYPES, _scan_once, MAX_STORED_PAYLOAD_CHARS
    for entry_id, flat in entries:
        n = len(flat)
        if (
            (n == 4 or (n == 6 and flat[4] in _SOURCE_FIELDS))
            and flat[0] == "t"
            and flat[2] == "d"
            and (etype := types.get(flat[1])) is not None
        ):
            if wanted is not None and etype not in wanted:
                continue
            raw = flat[3]
            if type(raw) is str and len(raw) <= limit:
                try:
                    data, end = scan(raw, 0)
                except (StopIteration, ValueError, RecursionError):
                    data = end = None
                if type(data) is dict and end == len(raw):
                    try:
                        timestamp = int(entry_id.split("-", 1)[0]) / 1000.0
                    except (ValueError, OverflowError, AttributeError):
                        timestamp = 0.0
                    source = flat[5] if n == 6 and flat[4] == "src" else None
                    append(_event(entry_id, etype, data, session_id, timestamp, source or None))
                    continue
        fields = dict(zip(flat[::2], flat[1::2], strict=False))
        event = event_from_fields(session_id, entry_id, fields)
        if wanted is None or event.type in wanted:
            append(event)
    return events


def is_stream_id(value: object) -> bool:
    """Whether ``value`` is a full stream entry id (``<ms>-<seq>``)."""
    return isinstance(value, str) and bool(_STREAM_ID.match(value))


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
