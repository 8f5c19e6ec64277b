"""The JSON API's approvals: /api/v1/approvals/ (mounted by ``api.py``).

The same bearer tokens, permission (``coordination.intervene`` to decide) and audited,
race-safe step (``approval_actions.decide``) as the session page's buttons.

Answers to a decision: 200 decided; 409 someone decided first (``decided_by``,
``decided_at``, ``approved`` say who, when and how); 410 the approval expired before anyone
decided; 404 no such approval in that session; 400 invalid input; 403 the token's user may
not decide.
"""

from __future__ import annotations

from typing import Any

from ninja import Field, Query, Router, Schema

from coordination.api.schemas import schema_from_dataclass
from coordination.core import Approval
from coordination.core.approvals import MAX_MESSAGE_CHARS
from coordination.core.keys import validate_session_id
from coordination.foundation.display import clean_deep, json_text
from coordination.supervision import approvals as approval_actions
from coordination.supervision.interventions import Actor

router = Router(tags=["approvals"])

# One response's arguments stop past this many bytes of JSON (then each further one says so).
RESPONSE_ARGS_BYTES = 8 * 1024 * 1024


# The core's Approval record minus what is the agent's business: the ids of the request and
# decision events (in the session's events anyway) and the decision's signature, which the
# agent checks against the dashboard's key (coordination/core/signing.py).
ApprovalOut = schema_from_dataclass(
    Approval,
    "ApprovalOut",
    exclude=frozenset({"request_event_id", "decision_event_id", "signature"}),
    descriptions={
        "action": "The tool (or action) the agent asks to run",
        "args": "The arguments the agent asked with",
        "requested_at": "Unix time of the request",
        "status": "pending, approved, rejected or expired",
        "decided_args": "Edited arguments the approval came with, or null",
    },
)


class ApprovalPageOut(Schema):
    count: int = Field(description="Pending approvals in all")
    items: list[ApprovalOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class SessionApprovalsOut(Schema):
    session_id: str
    items: list[ApprovalOut]


class DecideIn(Schema):
    approved: bool
    message: str | None = Field(
        None,
        max_length=MAX_MESSAGE_CHARS,
        description="Reaches the agent (the reason for a rejection)",
    )
    args: Any = Field(
        None, description="Approve with these arguments instead of the agent's (approvals only)"
    )


class DecideOut(Schema):
    session_id: str
    approval_id: str
    ok: bool
    message: str
    approval: ApprovalOut | None


class RefusedOut(Schema):
    detail: str
    decided_by: str | None = None
    decided_at: float | None = None
    approved: bool | None = None


class ErrorOut(Schema):
    detail: str


def _rows(approvals: list[Approval]) -> list[dict[str, Any]]:
    """Records as the API returns them: text cleaned, arguments bounded per response."""
    budget = RESPONSE_ARGS_BYTES
    rows = []
    for a in approvals:
        row = {name: getattr(a, name) for name in ApprovalOut.model_fields}
        for name in ("args", "decided_args"):
            size = len(json_text(row[name], tight=True).encode("utf-8", "replace"))
            budget -= size
            if budget < 0:
                row[name] = {"(omitted)": f"{size} bytes of JSON, past this response's limit"}
        rows.append(clean_deep(row))
    return rows


async def _actor(request) -> Actor:
    from coordination.api.v1 import _require_intervene  # api.py mounts this router: imported late

    return await _require_intervene(request)


@router.get("/", response={200: ApprovalPageOut, 400: ErrorOut, 401: ErrorOut, 503: ErrorOut})
async def pending_approvals(
    request,
    cursor: str | None = Query(None, max_length=512),
    limit: int = Query(50, ge=1, le=200),
):
    """Pending approvals of every session, the longest waiting first, a page at a time."""
    from coordination.foundation.core_clients import session_index

    index = session_index()
    page = await index.pending_approvals(limit=limit, cursor=cursor)
    count = await index.approval_count()
    return {
        "count": max(count, len(page.approvals)),
        "items": _rows(page.approvals),
        "next_cursor": page.next_cursor,
    }


# Registered before the session's list: "{session}/{approval}/decide" would match it too.
@router.post(
    "/{path:session_id}/{approval_id}/decide",
    response={
        200: DecideOut,
        400: ErrorOut,
        401: ErrorOut,
        403: ErrorOut,
        404: RefusedOut,
        409: RefusedOut,
        410: RefusedOut,
        503: ErrorOut,
    },
)
async def decide(request, session_id: str, approval_id: str, body: DecideIn):
    """Approve or reject a pending approval, once: the first decision wins (409 after it,
    naming who decided and when; 410 once it expired; 404 for an unknown approval)."""
    from coordination.foundation.core_clients import coordinator

    actor = await _actor(request)
    try:
        message = await approval_actions.decide(
            actor,
            session_id,
            approval_id,
            body.approved,
            message=body.message,
            args=body.args,
        )
    except approval_actions.ApprovalRefused as exc:
        return exc.status, {
            "detail": str(exc),
            "decided_by": exc.decided_by,
            "decided_at": exc.decided_at,
            "approved": exc.approved,
        }
    approval = await coordinator(session_id).get_approval(approval_id)
    return {
        "session_id": session_id,
        "approval_id": approval_id,
        "ok": True,
        "message": message,
        "approval": _rows([approval])[0] if approval else None,
    }


@router.get(
    "/{path:session_id}",
    response={200: SessionApprovalsOut, 400: ErrorOut, 401: ErrorOut, 404: ErrorOut, 503: ErrorOut},
)
async def session_approvals(request, session_id: str):
    """One session's approvals (pending and decided), oldest request first."""
    from coordination.api.v1 import _session_id
    from coordination.foundation.core_clients import coordinator, session_index

    validate_session_id(_session_id(session_id))
    approvals = await coordinator(session_id).approvals()
    if not approvals and await session_index().get_session(session_id) is None:
        return 404, {"detail": f"no session {session_id!r} (unknown or expired)"}
    return {"session_id": session_id, "items": _rows(approvals)}
