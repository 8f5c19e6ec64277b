"""The exceptions the coordination core raises: one base class, one subclass per failure."""

from __future__ import annotations

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


class RedisUnavailable(CoordinationError, ConnectionError):
    """Redis could not be reached; the message names the URL without its password."""

    def __init__(self, url: str, reason: str = "") -> None:
        self.url = url
        self.reason = reason
        detail = f": {reason}" if reason else ""
        super().__init__(f"Redis is unavailable at {url}{detail}")
