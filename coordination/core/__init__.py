"""The coordination core: Redis-backed events, claims and state for cooperating agents.

It imports nothing from Django, so agents can use it in any process::

    from coordination import AgentCoordinator, EventType, AtomicOperations
"""

from .approvals import Approval, Decision
from .atomic import AtomicOperations, Handoff
from .connection import check_connection, redact_url
from .coordinator import DELETE, AgentCoordinator
from .errors import (
    AlreadyDecided,
    ApprovalExpired,
    CoordinationError,
    CorruptStoredValue,
    DecisionTimeout,
    InvalidAgentId,
    InvalidApproval,
    InvalidCursor,
    InvalidEscalationQueue,
    InvalidIdempotencyKey,
    InvalidLease,
    InvalidSessionId,
    NotHumanControlled,
    NotOwner,
    PayloadNotJSON,
    PayloadTooLarge,
    RedisUnavailable,
    ReservedEventType,
    SessionClosed,
    SessionTakenOver,
    UnknownApproval,
    UnknownEventType,
    UnverifiedDecision,
    VersionConflict,
)
from .events import Event, EventType
from .index import (
    AgentPresence,
    ApprovalPage,
    FeedEntry,
    SessionIndex,
    SessionPage,
    SessionSummary,
)
from .keys import STATUSES
from .signing import DecisionSigner, DecisionVerifier

__all__ = [
    "STATUSES",
    "DELETE",
    "AgentCoordinator",
    "AgentPresence",
    "AlreadyDecided",
    "Approval",
    "ApprovalExpired",
    "ApprovalPage",
    "AtomicOperations",
    "CoordinationError",
    "CorruptStoredValue",
    "Decision",
    "DecisionSigner",
    "DecisionVerifier",
    "DecisionTimeout",
    "Event",
    "EventType",
    "FeedEntry",
    "Handoff",
    "InvalidAgentId",
    "InvalidApproval",
    "InvalidCursor",
    "InvalidIdempotencyKey",
    "InvalidLease",
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
    "UnknownApproval",
    "UnknownEventType",
    "UnverifiedDecision",
    "VersionConflict",
    "check_connection",
    "redact_url",
]
