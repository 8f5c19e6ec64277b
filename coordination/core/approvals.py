"""Approvals: an agent asks before it acts, a person decides once, the agent waits for it.

An approval lives in the session's ``approvals`` hash (id -> JSON record) and, while pending,
in the index's approvals queue (oldest first). ``request_approval`` and ``decide`` are each one
script, so the record, the pending counter on the session's meta, the queue entry and the
``approval_requested`` / ``approval_decided`` event change together; the first decision wins.

Expiry: an approval requested with ``expires_in`` can no longer be decided once that time has
passed (by the server's clock). The step that notices it (``decide`` or ``wait_for_decision``)
marks the record ``expired`` and publishes ``approval_decided`` with ``approved: false,
expired: true``, and the caller gets ``ApprovalExpired``: an expired request is not a rejection
by anyone, so it is not returned as a ``Decision``.

The mixin also keeps the session's saved runs (``SessionKeys.runs``): opaque JSON an agent
integration needs to resume after a restart (the Agents SDK's ``RunState``), outside the shared
state supervisors read and edit.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import (
    AlreadyDecided,
    ApprovalExpired,
    DecisionTimeout,
    InvalidApproval,
    InvalidSessionId,
    SessionClosed,
    UnknownApproval,
    UnverifiedDecision,
)
from .events import DEFAULT_MAX_PAYLOAD_BYTES, EventType, encode_json
from .keys import require_utf8, validate_agent_id, validate_session_id
from .scripts import decide_approval_script, request_approval_script, runs_script
from .signing import DecisionSigner, DecisionVerifier, decision_payload

APPROVAL_STATUSES = ("pending", "approved", "rejected", "expired")
MAX_ACTION_CHARS = 200
MAX_MESSAGE_CHARS = 4000
_APPROVAL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# When the clocks of this host and the Redis server disagree, an approval this host believes
# expired may still be pending on the server: it is checked again this often.
EXPIRY_RECHECK_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class Decision:
    """What a person decided on an approval. ``args`` are edited arguments, or None."""

    approval_id: str
    approved: bool
    by: str | None
    message: str | None
    args: Any
    decided_at: float | None
    event_id: str | None
    signature: str | None = None  # the dashboard's, when it made the decision (see signing)


@dataclass(frozen=True, slots=True)
class Approval:
    """An approval record as stored (``status``: pending, approved, rejected or expired)."""

    session_id: str
    approval_id: str
    action: str
    args: Any
    reason: str | None
    agent_id: str | None
    requested_at: float | None
    expires_at: float | None
    status: str
    decided_by: str | None = None
    decided_at: float | None = None
    message: str | None = None
    decided_args: Any = None
    request_event_id: str | None = None
    decision_event_id: str | None = None
    signature: str | None = None

    @property
    def pending(self) -> bool:
        return self.status == "pending"

    @property
    def decision(self) -> Decision | None:
        """The decision, once approved or rejected (None while pending or when expired)."""
        if self.status not in ("approved", "rejected"):
            return None
        return Decision(
            approval_id=self.approval_id,
            approved=self.status == "approved",
            by=self.decided_by,
            message=self.message,
            args=self.decided_args,
            decided_at=self.decided_at,
            event_id=self.decision_event_id,
            signature=self.signature,
        )

    def signed_payload(self, namespace: str) -> bytes | None:
        """The bytes the dashboard signed for this decision (None while undecided)."""
        decision = self.decision
        if decision is None:
            return None
        return decision_payload(
            namespace,
            self.session_id,
            self.approval_id,
            self.request_event_id,
            decision.approved,
            decision.by or "",
            decision.message,
            decision.args,
        )


def validate_approval_id(approval_id: object) -> str:
    if not isinstance(approval_id, str) or not _APPROVAL_ID.fullmatch(approval_id):
        raise InvalidApproval(
            f"approval id {str(approval_id)[:70]!r} must be 1-64 characters of letters, "
            "digits, '_' and '-'"
        )
    return approval_id


def _text(value: object, what: str, limit: int, *, control_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidApproval(f"{what} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise InvalidApproval(f"{what} must not be empty")
    if len(value) > limit:
        raise InvalidApproval(f"{what} is {len(value)} characters long; the limit is {limit}")
    if not control_ok and _CONTROL.search(value):
        raise InvalidApproval(f"{what} {value[:40]!r} holds a control character")
    return require_utf8(value, what, InvalidApproval)


def _optional_text(value: object, what: str) -> str:
    """JSON text of an optional free-text field (a reason, a message)."""
    if value is None:
        return "null"
    return json.dumps(_text(value, what, MAX_MESSAGE_CHARS, control_ok=True), ensure_ascii=False)


def _ms(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value / 1000.0
    return None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _json_field(record: dict[str, Any], name: str) -> Any:
    return _loads(record.get(name))[0]


# Stored text longer than this was not written by the core (which refuses payloads over the
# configured limit); it is not decoded.
MAX_STORED_CHARS = 16 * DEFAULT_MAX_PAYLOAD_BYTES


def _loads(raw: object) -> tuple[Any, bool]:
    """``(value, True)`` for stored JSON text, ``(None, False)`` for anything else: records
    are read without trusting them (anyone holding REDIS_URL can write one)."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_STORED_CHARS:
        return None, False
    try:
        return json.loads(raw), True
    except (ValueError, RecursionError):
        return None, False


def queue_member(member: str) -> tuple[str, str] | None:
    """``(session id, approval id)`` of an index queue entry, or None when it is not one the
    core could have written."""
    session_id, sep, approval_id = member.partition("\0")
    if not sep or not _APPROVAL_ID.fullmatch(approval_id):
        return None
    try:
        validate_session_id(session_id)
    except InvalidSessionId:
        return None
    return session_id, approval_id


def pending_count(meta: dict[str, str]) -> int:
    """The session meta's count of pending approvals (0 when absent or not a number)."""
    try:
        return max(0, int(meta.get("approvals_pending") or 0))
    except ValueError:
        return 0


def approval_from_record(session_id: str, raw: str | None) -> Approval | None:
    """Parse a stored record without trusting it (anyone with REDIS_URL can write one): None
    when it is not a record the core could have written."""
    record, ok = _loads(raw)
    if not ok or not isinstance(record, dict):
        return None
    status = record.get("status")
    if status not in APPROVAL_STATUSES or not isinstance(record.get("id"), str):
        return None
    reason = _json_field(record, "reason_json")
    message = _json_field(record, "message_json")
    return Approval(
        session_id=session_id,
        approval_id=record["id"],
        action=record.get("action") if isinstance(record.get("action"), str) else "",
        args=_json_field(record, "args_json"),
        reason=reason if isinstance(reason, str) else None,
        agent_id=_str(record.get("agent_id")),
        requested_at=_ms(record.get("requested_ms")),
        expires_at=_ms(record.get("expires_ms")),
        status=status,
        decided_by=_str(record.get("decided_by")),
        decided_at=_ms(record.get("decided_ms")),
        message=message if isinstance(message, str) else None,
        decided_args=_json_field(record, "decided_args_json"),
        request_event_id=_str(record.get("request_event_id")),
        decision_event_id=_str(record.get("decision_event_id")),
        signature=_str(record.get("signature")),
    )


class ApprovalsMixin:
    """``AgentCoordinator``'s approval operations (see the module docstring)."""

    async def request_approval(
        self,
        action: str,
        args: Any = None,
        *,
        reason: str | None = None,
        agent_id: str | None = None,
        expires_in: float | None = None,
        approval_id: str | None = None,
    ) -> Approval:
        """Ask a person before acting: publishes ``approval_requested`` and queues the approval.

        ``args`` are the action's arguments (any JSON value). ``approval_id`` makes the call
        idempotent: asking again with an id already requested returns that approval unchanged.
        Refused with ``SessionClosed`` on a closed session; not refused while a human controls
        the session (the human is who decides).
        """
        _text(action, "action", MAX_ACTION_CHARS)
        args_json = encode_json({} if args is None else args, "args", self.max_payload_bytes)
        reason_json = _optional_text(reason, "reason")
        agent = validate_agent_id(agent_id) if agent_id is not None else ""
        expires_ms = ""
        if expires_in is not None:
            if (
                not isinstance(expires_in, (int, float))
                or isinstance(expires_in, bool)
                or not math.isfinite(expires_in)
                or expires_in <= 0
            ):
                raise InvalidApproval(f"expires_in must be a positive number, not {expires_in!r}")
            expires_ms = max(1, min(int(expires_in * 1000), self.retention_ms))
        aid = uuid.uuid4().hex if approval_id is None else validate_approval_id(approval_id)
        code, record = await self._run(
            request_approval_script,
            self.session_id,
            aid,
            action,
            args_json,
            reason_json,
            agent,
            expires_ms,
            agent or self.source or "",
        )
        if code == 0:
            raise SessionClosed(self.session_id)
        return self._parsed(record, aid)

    async def decide(
        self,
        approval_id: str,
        approved: bool,
        *,
        by: str,
        message: str | None = None,
        args: Any = None,
        signer: DecisionSigner | None = None,
    ) -> Decision:
        """Approve or reject, once: a later decision raises ``AlreadyDecided`` naming the first.

        ``signer`` (the dashboard's ``DecisionSigner``) signs the decision so agents can check
        that a person made it (``wait_for_decision(verifier=...)``).

        ``by`` names who decided (the dashboard passes ``human:<username>``); ``args`` are
        edited arguments, allowed only when approving. Publishes ``approval_decided``.
        Raises ``UnknownApproval``, or ``ApprovalExpired`` when its time has passed (the
        record becomes ``expired`` in the same step).
        """
        validate_approval_id(approval_id)
        if not isinstance(approved, bool):
            raise InvalidApproval(f"approved must be True or False, not {approved!r}")
        validate_agent_id(by, "by")
        message_json = _optional_text(message, "message")
        args_json = ""
        if args is not None:
            if not approved:
                raise InvalidApproval("edited arguments can only come with an approval")
            args_json = encode_json(args, "args", self.max_payload_bytes)
        signature = ""
        if signer is not None:
            # bound to this request (its event id), so it cannot be moved to another one
            request = await self.get_approval(approval_id)
            if request is None:
                raise UnknownApproval(self.session_id, approval_id)
            signature = signer.sign(
                decision_payload(
                    self.namespace,
                    self.session_id,
                    approval_id,
                    request.request_event_id,
                    approved,
                    by,
                    message,
                    args,
                )
            )
        approval = await self._decide(
            approval_id, "1" if approved else "0", by, message_json, args_json, signature
        )
        return approval.decision  # type: ignore[return-value]

    async def _decide(
        self, approval_id: str, op: str, by: str, message: str, args: str, signature: str = ""
    ) -> Approval:
        result = await self._run(
            decide_approval_script, self.session_id, approval_id, op, by, message, args, signature
        )
        if result[0] == 0:
            if result[1] == "unknown":
                raise UnknownApproval(self.session_id, approval_id)
            earlier = self._parsed(result[2], approval_id)
            if earlier.status == "expired":
                raise ApprovalExpired(self.session_id, approval_id, earlier.decided_at)
            raise AlreadyDecided(
                self.session_id,
                approval_id,
                earlier.decided_by,
                earlier.decided_at,
                earlier.status == "approved",
            )
        approval = self._parsed(result[1], approval_id)
        if result[0] == 3:
            raise ApprovalExpired(self.session_id, approval_id, approval.decided_at)
        return approval

    def _parsed(self, record: str, approval_id: str) -> Approval:
        approval = approval_from_record(self.session_id, record)
        if approval is None:  # written around the core, straight into Redis
            raise UnknownApproval(self.session_id, approval_id)
        return approval

    async def get_approval(self, approval_id: str) -> Approval | None:
        """The approval's record, or None if the session has no approval with this id."""
        validate_approval_id(approval_id)
        raw = await self.call(self.redis.hget(self._keys.approvals, approval_id))
        return approval_from_record(self.session_id, raw)

    async def approvals(self, status: str | None = None) -> list[Approval]:
        """The session's approvals (of one ``status`` if given), oldest request first."""
        if status is not None and status not in APPROVAL_STATUSES:
            raise InvalidApproval(
                f"unknown approval status {status!r}; valid: {', '.join(APPROVAL_STATUSES)}"
            )
        raw = await self.call(self.redis.hgetall(self._keys.approvals))
        rows = [approval_from_record(self.session_id, value) for value in raw.values()]
        rows = [a for a in rows if a is not None and (status is None or a.status == status)]
        return sorted(rows, key=lambda a: (a.requested_at or 0, a.approval_id))

    async def wait_for_decision(
        self,
        approval_id: str,
        timeout: float | None = None,
        *,
        verifier: DecisionVerifier | None = None,
    ) -> Decision:
        """The decision on ``approval_id``: at once if made, else when it is made.

        Follows the session's events from the request on. Raises ``DecisionTimeout`` after
        ``timeout`` seconds without a decision (the approval stays pending), ``ApprovalExpired``
        when its expiry passes first (it is marked expired then), ``SessionClosed`` when the
        session is closed while the approval is pending, ``UnknownApproval``. With a
        ``verifier`` (the dashboard's public key), a decision it did not sign raises
        ``UnverifiedDecision`` instead of being returned.
        """
        if timeout is not None and (
            not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout < 0
        ):
            raise InvalidApproval(f"timeout must be zero or more seconds, not {timeout!r}")
        approval = await self._existing(approval_id)
        loop_clock = time.monotonic
        deadline = None if timeout is None else loop_clock() + timeout
        cursor = approval.request_event_id or "0"
        while True:
            if not approval.pending:
                return self._outcome(approval, verifier)
            step: float | None = None
            if approval.expires_at is not None:
                step = approval.expires_at - self.clock()
                if step <= 0:
                    try:
                        approval = await self._decide(approval_id, "x", "", "null", "")
                    except AlreadyDecided:
                        approval = await self._existing(approval_id)
                    if not approval.pending:
                        continue
                    step = EXPIRY_RECHECK_SECONDS  # this host's clock runs ahead of Redis's
            if deadline is not None:
                left = deadline - loop_clock()
                if left <= 0:
                    raise DecisionTimeout(self.session_id, approval_id, timeout)
                step = left if step is None else min(step, left)
            until = None if step is None else loop_clock() + step
            async for event in self.subscribe(
                timeout=step,
                types=[EventType.APPROVAL_DECIDED, EventType.SESSION_CLOSED],
                since=cursor,
            ):
                cursor = event.id
                if event.type is EventType.SESSION_CLOSED:
                    # nobody will decide any more: an agent must not wait for good
                    raise SessionClosed(self.session_id)
                if event.data.get("approval_id") == approval_id:
                    break
                if until is not None and loop_clock() >= until:
                    break
            approval = await self._existing(approval_id)

    async def _existing(self, approval_id: str) -> Approval:
        approval = await self.get_approval(approval_id)
        if approval is None:
            raise UnknownApproval(self.session_id, approval_id)
        return approval

    def _outcome(self, approval: Approval, verifier: DecisionVerifier | None = None) -> Decision:
        if approval.status == "expired":
            raise ApprovalExpired(self.session_id, approval.approval_id, approval.decided_at)
        decision = approval.decision
        if verifier is not None and not verifier.verify(
            approval.signed_payload(self.namespace), approval.signature
        ):
            raise UnverifiedDecision(self.session_id, approval.approval_id, approval.decided_by)
        return decision  # type: ignore[return-value]

    # -- saved runs -----------------------------------------------------------------------

    async def save_run(self, name: str, value: Any) -> None:
        """Keep ``value`` (JSON) under ``name`` until deleted or the session expires; saving
        again replaces it and ends an earlier claim."""
        validate_approval_id(name)
        text = encode_json(value, "run", self.max_payload_bytes)
        await self._run(runs_script, self.session_id, "set", name, text)

    async def claim_run(self, name: str, by: str) -> bool:
        """Take the saved run ``name`` for resuming: True for exactly one caller per save."""
        validate_approval_id(name)
        validate_agent_id(by, "by")
        record = json.dumps({"by": by, "ms": int(self.clock() * 1000)})
        return await self._run(runs_script, self.session_id, "claim", name, record) == 1

    async def saved_runs(self) -> dict[str, tuple[Any, dict[str, Any] | None]]:
        """Every saved run: name -> (value, claim or None)."""
        raw = await self.call(self.redis.hgetall(self._keys.runs))
        runs = {}
        for name, text in raw.items():
            if name.endswith("#claim"):
                continue
            value, ok = _loads(text)
            claim, _ = _loads(raw.get(f"{name}#claim"))
            if ok:
                runs[name] = (value, claim if isinstance(claim, dict) else None)
        return runs

    async def delete_run(self, name: str) -> None:
        validate_approval_id(name)
        await self._run(runs_script, self.session_id, "del", name, "")
