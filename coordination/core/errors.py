"""The exceptions the coordination core raises: one base class, one subclass per failure."""

from __future__ import annotations

import time
from typing import Any


class CoordinationError(Exception):
    """Base class of every error the coordination core raises on purpose."""


class InvalidSessionId(CoordinationError, ValueError):
    """A session id is empty, too long, not text, or holds control characters."""


class InvalidAgentId(CoordinationError, ValueError):
    """An agent or supervisor id is empty, too long, or holds control characters."""


class UnknownEventType(CoordinationError, ValueError):
    """An event type is neither an ``EventType`` nor one of its values."""


class ReservedEventType(CoordinationError, ValueError):
    """An event type that only an atomic operation may publish was passed to ``publish``."""


class PayloadNotJSON(CoordinationError, TypeError):
    """A payload or state value cannot be stored as JSON and read back unchanged."""


class PayloadTooLarge(CoordinationError, ValueError):
    """An encoded payload is larger than the configured limit."""

    def __init__(self, size: int, limit: int, where: str = "payload") -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"{where} is {size} bytes encoded; the limit is {limit} bytes")


class NotOwner(CoordinationError):
    """The caller does not hold the handoff claim it tried to release, renew or reassign."""

    def __init__(self, session_id: str, agent_id: str, current_owner: str | None) -> None:
        self.session_id = session_id
        self.agent_id = agent_id
        self.current_owner = current_owner
        held = (
            f"held by {current_owner!r}" if current_owner else "not claimed (or its lease expired)"
        )
        super().__init__(
            f"{agent_id!r} does not own the handoff claim of session {session_id!r}: it is {held}"
        )


class VersionConflict(CoordinationError):
    """A compare-and-set on shared state found another version than the one expected."""

    def __init__(
        self, session_id: str, key: str, expected: int, actual: int, current_value: Any
    ) -> None:
        self.session_id = session_id
        self.key = key
        self.expected = expected
        self.actual = actual
        self.current_value = current_value
        super().__init__(
            f"state key {key!r} of session {session_id!r} changed: expected version "
            f"{expected}, found version {actual} (current value {current_value!r})"
        )


class SessionTakenOver(CoordinationError):
    """A human controls the session, so the agent operation was refused."""

    def __init__(self, session_id: str, controller: str, since: float | None = None) -> None:
        self.session_id = session_id
        self.controller = controller
        self.since = since
        super().__init__(f"session {session_id!r} is controlled by {controller!r}")


class SessionClosed(CoordinationError):
    """The session is closed; the operation needs an open session."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"session {session_id!r} is closed")


class NotHumanControlled(CoordinationError):
    """A hand-back was asked for a session that no human controls."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"session {session_id!r} is not under human control")


class InvalidEscalationQueue(CoordinationError, ValueError):
    """An escalation's ``queue`` is not a short name."""


class InvalidCursor(CoordinationError, ValueError):
    """A pagination cursor or event id is malformed."""


class InvalidIdempotencyKey(CoordinationError, ValueError):
    """An ``idempotency_key`` that is not a string of 1-256 characters."""


class CorruptStoredValue(CoordinationError, ValueError):
    """A stored value is not what the core writes (someone wrote the key around the core)."""

    def __init__(self, session_id: str, what: str, reason: str) -> None:
        self.session_id = session_id
        self.what = what
        self.reason = reason
        where = f" of session {session_id!r}" if session_id else ""
        super().__init__(f"{what}{where} is not valid: {reason}")


class RedisUnavailable(CoordinationError, ConnectionError):
    """Redis could not be reached; the message names the URL without its password."""

    def __init__(self, url: str, reason: str = "") -> None:
        self.url = url
        self.reason = reason
        detail = f": {reason}" if reason else ""
        super().__init__(f"Redis is unavailable at {url}{detail}")


class InvalidLease(CoordinationError, ValueError):
    """A claim's ``ttl`` is not a finite number of seconds from 1 ms to a year."""


class InvalidApproval(CoordinationError, ValueError):
    """An approval request or decision is malformed (action, id, expiry, decision)."""


class UnknownApproval(CoordinationError, KeyError):
    """No approval with this id exists in the session (never requested, or cleared/expired)."""

    def __init__(self, session_id: str, approval_id: str) -> None:
        self.session_id = session_id
        self.approval_id = approval_id
        super().__init__(f"session {session_id!r} has no approval {approval_id!r}")

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0])


class AlreadyDecided(CoordinationError):
    """An approval was decided before this decision arrived: the first decision wins."""

    def __init__(
        self,
        session_id: str,
        approval_id: str,
        decided_by: str | None,
        decided_at: float | None,
        approved: bool,
    ) -> None:
        self.session_id = session_id
        self.approval_id = approval_id
        self.decided_by = decided_by
        self.decided_at = decided_at
        self.approved = approved
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(decided_at))
            if decided_at is not None
            else "earlier"
        )
        verdict = "approved" if approved else "rejected"
        super().__init__(
            f"approval {approval_id!r} of session {session_id!r} was already {verdict} "
            f"by {decided_by!r} at {when}"
        )


class ApprovalExpired(CoordinationError):
    """The approval's deadline passed before anyone decided; it can no longer be decided."""

    def __init__(self, session_id: str, approval_id: str, expired_at: float | None) -> None:
        self.session_id = session_id
        self.approval_id = approval_id
        self.expired_at = expired_at
        super().__init__(
            f"approval {approval_id!r} of session {session_id!r} expired before a decision"
        )


class DecisionTimeout(CoordinationError, TimeoutError):
    """``wait_for_decision`` gave up: nobody decided within its timeout (still pending)."""

    def __init__(self, session_id: str, approval_id: str, timeout: float) -> None:
        self.session_id = session_id
        self.approval_id = approval_id
        self.timeout = timeout
        super().__init__(
            f"no decision on approval {approval_id!r} of session {session_id!r} "
            f"within {timeout:g} seconds (it is still pending)"
        )


class UnverifiedDecision(CoordinationError):
    """A decision without a valid dashboard signature: it may have been written by an agent
    (anyone holding the agents' Redis credentials can write one naming any supervisor)."""

    def __init__(self, session_id: str, approval_id: str, claimed_by: str | None) -> None:
        self.session_id = session_id
        self.approval_id = approval_id
        self.claimed_by = claimed_by
        super().__init__(
            f"the decision on approval {approval_id!r} of session {session_id!r} (claimed by "
            f"{claimed_by!r}) carries no valid dashboard signature; not acting on it"
        )
