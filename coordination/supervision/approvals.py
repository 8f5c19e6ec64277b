"""Deciding an agent's approval request as a supervisor: one race-safe, audited step.

The core's ``decide`` is atomic and the first decision wins; this module adds what every
intervention leaves (``interventions._record``: an ``AuditEntry`` with the approval record
before and after, a JSON log line, the ``coordinator_interventions_total`` count, the pages'
audit refresh) and turns the core's refusals into messages a supervisor can act on. The page
views and the JSON API both call ``decide``.
"""

from __future__ import annotations

from typing import Any

from coordination.core import (
    AlreadyDecided,
    Approval,
    ApprovalExpired,
    CoordinationError,
    InvalidApproval,
    InvalidSessionId,
    UnknownApproval,
)
from coordination.core.approvals import validate_approval_id
from coordination.core.keys import validate_session_id
from coordination.foundation.core_clients import coordinator, decision_signer, session_index
from coordination.foundation.display import cut_chars, json_text, short_text
from coordination.models import AuditEntry
from coordination.supervision.interventions import Actor, InterventionRefused, _ago, _record

# Arguments kept in an audit entry up to this many characters of JSON (the event has them all).
AUDIT_ARGS_CHARS = 2000


class ApprovalRefused(InterventionRefused):
    """A decision that was not made. ``status`` is the HTTP status the API answers with:
    409 decided first by someone else (``decided_by``, ``decided_at``, ``approved`` say how),
    404 unknown, 410 expired, 400 invalid input."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        decided_by: str | None = None,
        decided_at: float | None = None,
        approved: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.decided_by = decided_by
        self.decided_at = decided_at
        self.approved = approved


def approval_snapshot(approval: Approval | None) -> dict[str, Any] | None:
    """The approval record as an audit entry keeps it (arguments bounded)."""
    if approval is None:
        return None

    def bounded(value: Any) -> Any:
        text = json_text(value)
        return value if len(text) <= AUDIT_ARGS_CHARS else cut_chars(text, AUDIT_ARGS_CHARS)

    return {
        "approval_id": approval.approval_id,
        "action": short_text(approval.action),
        "args": bounded(approval.args),
        "agent": short_text(approval.agent_id),
        "status": approval.status,
        "decided_by": short_text(approval.decided_by),
        "decided_at": approval.decided_at,
        "message": cut_chars(approval.message, AUDIT_ARGS_CHARS) if approval.message else None,
        "decided_args": bounded(approval.decided_args)
        if approval.decided_args is not None
        else None,
    }


def explain(exc: CoordinationError) -> ApprovalRefused:
    """The refusal a supervisor (or an API client) is shown for one of the core's errors."""
    if isinstance(exc, AlreadyDecided):
        who = (exc.decided_by or "someone").removeprefix("human:")
        verb = "approved" if exc.approved else "rejected"
        return ApprovalRefused(
            f"Already {verb} by {who} {_ago(exc.decided_at)}.",
            409,
            decided_by=exc.decided_by,
            decided_at=exc.decided_at,
            approved=exc.approved,
        )
    if isinstance(exc, ApprovalExpired):
        return ApprovalRefused(
            "This approval expired before anyone decided; the agent was told it was not "
            "approved and will not act on it.",
            410,
            decided_at=exc.expired_at,
        )
    if isinstance(exc, UnknownApproval):
        return ApprovalRefused(
            "This session has no such approval (it may have been cleared, or the session expired).",
            404,
        )
    return ApprovalRefused(str(exc), 400)


async def decide(
    actor: Actor,
    session_id: str,
    approval_id: str,
    approved: bool,
    *,
    message: str | None = None,
    args: Any = None,
) -> str:
    """Approve or reject ``approval_id`` as ``actor``; the message for the page.

    Raises ``ApprovalRefused`` (audited as refused) when someone decided first, the approval
    expired or does not exist, or the input is invalid. ``args`` replace the agent's
    arguments (approvals only)."""
    action = AuditEntry.Action.APPROVE if approved else AuditEntry.Action.REJECT
    try:
        validate_session_id(session_id)
        validate_approval_id(approval_id)
    except (InvalidSessionId, InvalidApproval) as exc:
        raise ApprovalRefused(f"Bad request: {exc}", 400) from None
    index = session_index()
    coord = coordinator(session_id)
    message = (message or "").strip() or None
    before = await coord.get_approval(approval_id)
    if before is None:
        refusal = explain(UnknownApproval(session_id, approval_id))
        await _record(index, actor, action, session_id, None, None, "refused", str(refusal))
        raise refusal

    async def record_outcome(outcome: str, detail: str) -> None:
        """The audit entry, with the approval as it was before and as it is now."""
        after = await coord.get_approval(approval_id)
        before_, after_ = approval_snapshot(before), approval_snapshot(after)
        await _record(index, actor, action, session_id, before_, after_, outcome, detail)

    try:
        await coord.decide(
            approval_id,
            approved,
            by=actor.name,
            message=message,
            args=args,
            signer=decision_signer(),
        )
    except CoordinationError as exc:
        refusal = explain(exc)
        await record_outcome("refused", str(refusal))
        raise refusal from exc
    tool = short_text(before.action, 80)
    if approved:
        text = f"Approved {tool}" + (" with edited arguments." if args is not None else ".")
    else:
        text = f"Rejected {tool}."
    await record_outcome("done", text + (f" Message: {message[:200]}" if message else ""))
    return text
