"""The coordination core: Redis-backed events, claims and state for cooperating agents.

It imports nothing from Django, so agents can use it in any process::

    from coordination import AgentCoordinator, EventType, AtomicOperations
"""

from .atomic import AtomicOperations, Handoff
from .connection import check_connection, redact_url
from .coordinator import DELETE, AgentCoordinator
from .errors import (
    CoordinationError,
    InvalidAgentId,
    InvalidCursor,
    InvalidEscalationQueue,
    InvalidSessionId,
    NotHumanControlled,
    NotOwner,
    PayloadNotJSON,
    PayloadTooLarge,
    RedisUnavailable,
    ReservedEventType,
    SessionClosed,
    SessionTakenOver,
    UnknownEventType,
    VersionConflict,
)
from .events import Event, EventType
from .index import AgentPresence, FeedEntry, SessionIndex, SessionPage, SessionSummary
from .keys import STATUSES

__all__ = [
    "STATUSES",
    "DELETE",
    "AgentCoordinator",
    "AgentPresence",
    "AtomicOperations",
    "CoordinationError",
    "Event",
    "EventType",
    "FeedEntry",
    "Handoff",
    "InvalidAgentId",
    "InvalidCursor",
    "InvalidEscalationQueue",
    "InvalidSessionId",
    "NotHumanControlled",
    "NotOwner",
    "PayloadNotJSON",
    "PayloadTooLarge",
    "RedisUnavailable",
    "ReservedEventType",
    "SessionClosed",
    "SessionIndex",
    "SessionPage",
    "SessionSummary",
    "SessionTakenOver",
    "UnknownEventType",
    "VersionConflict",
    "check_connection",
    "redact_url",
]
