"""Key names. Every key of one session shares the hash tag ``{<encoded session id>}``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from .errors import InvalidAgentId, InvalidEscalationQueue, InvalidSessionId, PayloadNotJSON

MAX_ID_LENGTH = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

STATUSES = ("active", "waiting", "escalated", "human", "closed")


# Ids that passed the checks below (plain ``str`` only: a subclass may redefine equality).
# An agent process names the same few sessions and agents on every call; bounded.
_checked_ids: set[str] = set()


def require_utf8(value: str, what: str, error: type[Exception]) -> str:
    """``value``, or ``error`` if it holds what UTF-8 cannot carry (lone surrogates): Redis
    could not be sent it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"{what} {value[:40]!r} is not valid UTF-8 text: {exc.reason}") from None
    return value


def _check_id(value: object, what: str, error: type[ValueError]) -> str:
    if type(value) is str and value in _checked_ids:
        return value
    if not isinstance(value, str):
        raise error(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise error(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise error(f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    bad = _CONTROL.search(value)
    if bad:
        raise error(
            f"{what} {value[:40]!r} holds the control character {bad.group()!r} "
            f"at position {bad.start()}"
        )
    require_utf8(value, what, error)
    if type(value) is str:
        if len(_checked_ids) >= 4096:
            _checked_ids.clear()
        _checked_ids.add(value)
    return value


MAX_STATE_KEY_LENGTH = 1024


def validate_state_key(key: object) -> str:
    """A key of a session's shared state: any text Redis can be sent, up to 1,024 characters."""
    if type(key) is str and key in _checked_ids:
        return key
    if not isinstance(key, str) or not key:
        raise PayloadNotJSON(f"state keys must be non-empty strings, not {str(key)[:40]!r}")
    if len(key) > MAX_STATE_KEY_LENGTH:
        raise PayloadNotJSON(
            f"a state key is {len(key)} characters long; the limit is {MAX_STATE_KEY_LENGTH}"
        )
    return require_utf8(key, "state key", PayloadNotJSON)


def validate_actor(value: object, what: str) -> str:
    """An optional agent or person named by a call (``by``, an expected owner): "" for none."""
    if value is None or value == "":
        return ""
    return validate_agent_id(value, what)


def validate_session_id(session_id: object) -> str:
    return _check_id(session_id, "session id", InvalidSessionId)


def validate_agent_id(agent_id: object, what: str = "agent id") -> str:
    return _check_id(agent_id, what, InvalidAgentId)


_QUEUE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def validate_queue(queue: object) -> str:
    """An escalation's ``queue`` (``data["queue"]``): absent means the default queue."""
    if queue is None:
        return ""
    if not isinstance(queue, str) or not _QUEUE.match(queue):
        raise InvalidEscalationQueue(
            f"escalation queue {str(queue)[:40]!r} must be 1-64 characters of letters, digits, "
            "'_', '.', ':', '-'"
        )
    return queue


def encode_id(value: str) -> str:
    """Percent-encode so that ``{``, ``}`` and ``:`` in an id cannot break a key or its tag."""
    return quote(value, safe="")


def decode_id(value: str) -> str:
    return unquote(value)


@dataclass(frozen=True, slots=True)
class SessionKeys:
    events: str
    meta: str
    claim: str
    state: str
    versions: str
    # approval id -> JSON record (see core/approvals.py)
    approvals: str
    # saved agent runs waiting on approvals (name -> JSON), kept out of the shared state
    runs: str
    # operation id -> first outcome, in two generations (see scripts.OPS): a retried
    # operation returns what the first attempt did instead of acting twice (issue 17)
    ops: str
    ops_prev: str
    # Cluster mode only: index writes not yet acknowledged as applied on the index slot
    outbox: str

    def all(self) -> list[str]:
        """In the order the scripts' KEYS expect (scripts.PRELUDE)."""
        return [
            self.events,
            self.meta,
            self.claim,
            self.state,
            self.versions,
            self.approvals,
            self.runs,
            self.ops,
            self.ops_prev,
            self.outbox,
        ]


class Keyspace:
    """Names every key under one namespace (``coord`` unless configured)."""

    # The names the Lua scripts use for ``global_keys()``, in its order: the scripts' key
    # tables are generated from this (``scripts.lua_key_table``), never numbered by hand.
    GLOBAL_KEY_NAMES = (
        "feed",
        "activity",
        "names",
        "owners",
        "esc",
        "agents",
        "seen",
        *(f"status:{s}" for s in STATUSES),
        "stats",
        "counters",
        "approvals",
    )

    def __init__(self, namespace: str = "coord") -> None:
        if not _NAMESPACE.match(namespace or ""):
            raise ValueError(
                f"namespace {namespace!r} must be 1-64 characters of letters, digits, '_', '.', '-'"
            )
        self.namespace = namespace
        # The global keys share one hash tag, so that on Redis Cluster one script can update
        # them all atomically (they live on one node; each session's keys on its own slot).
        g = f"{namespace}:{{index}}"
        self.feed = f"{g}:feed"
        self.activity = f"{g}:activity"
        self.names = f"{g}:names"
        self.owners = f"{g}:owners"
        self.escalations = f"{g}:escalations"
        self.agents = f"{g}:agents"
        self.agents_seen = f"{g}:agents-seen"
        self.status = {s: f"{g}:status:{s}" for s in STATUSES}
        self.stats = f"{g}:events-per-minute"
        # Monotonic counters for /metrics (events per type, claims won/lost, interventions...).
        self.counters = f"{g}:counters"
        # Per dashboard process: its open websockets, refreshed every few seconds.
        self.workers = f"{g}:workers"
        # Cluster mode only: the index state last applied per session (see scripts.APPLY_INDEX).
        self.applied = f"{g}:applied"
        # Pending approvals of every session, oldest first: "<session id>\0<approval id>"
        # scored by the request's time in ms.
        self.approvals = f"{g}:approvals"
        # The dashboard's relay (one active across its processes): the lease its holder renews,
        # and the last feed id it relayed. Their own hash tag: both are written in one script.
        self.relay_lease = f"{namespace}:{{relay}}:lease"
        self.relay_cursor = f"{namespace}:{{relay}}:cursor"

    def session(self, session_id: str) -> SessionKeys:
        base = f"{self.namespace}:{{{encode_id(session_id)}}}"
        return SessionKeys(
            events=f"{base}:events",
            meta=f"{base}:meta",
            claim=f"{base}:claim",
            state=f"{base}:state",
            versions=f"{base}:statever",
            approvals=f"{base}:approvals",
            runs=f"{base}:runs",
            ops=f"{base}:ops",
            ops_prev=f"{base}:ops-prev",
            outbox=f"{base}:outbox",
        )

    def global_keys(self) -> list[str]:
        """The index keys every session script updates, in the order the scripts expect."""
        return [
            self.feed,
            self.activity,
            self.names,
            self.owners,
            self.escalations,
            self.agents,
            self.agents_seen,
            *(self.status[s] for s in STATUSES),
            self.stats,
            self.counters,
            self.approvals,
        ]
