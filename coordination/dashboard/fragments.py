"""Context builders and partial rendering shared by views and websocket consumers, so a row
looks the same whether it came with the page or by live update."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.template.loader import render_to_string

from coordination.core import (
    STATUSES,
    CorruptStoredValue,
    Event,
    EventType,
    SessionIndex,
    SessionSummary,
)
from coordination.core.events import decode_stored_json, is_stream_id
from coordination.dashboard.approvals import overview_approvals_context, session_approvals_context
from coordination.dashboard.session_list import DEFAULT_SORT, SORTS, VIEWS, search_text
from coordination.dashboard.transcript import transcript_context
from coordination.foundation.core_clients import coordinator, read_state, session_index
from coordination.foundation.display import (
    PAYLOAD_DISPLAY_BYTES,
    payload_display,
    payload_query,
    short_text,
)
from coordination.supervision.escalations import (
    OVERVIEW_QUEUE,
    escalation_reason,
    queue_rows,
    sla_clock_text,
)
from coordination.supervision.pickup import overview_pickup_context, pickup_sla
from coordination.supervision.sla import sla_deadline

log = logging.getLogger(__name__)

TIMELINE_PAGE = 50
# The state table shows this many keys at most (each value cut like an event's payload).
STATE_ROWS = 100
# ... and this many bytes of their values in all (past it, each value shows its first bytes).
STATE_BYTES = 256 * 1024
MIN_STATE_BYTES = 512
EVENT_TYPE_CHARS = 64
SESSIONS_PAGE = 50
# Events that change what the session header shows (status, owner, claim).
SUMMARY_EVENTS = {
    EventType.HANDOFF_READY,
    EventType.HANDOFF_CLAIMED,
    EventType.HANDOFF_RELEASED,
    EventType.HANDOFF_REASSIGNED,
    EventType.ESCALATED,
    EventType.HUMAN_TAKEOVER,
    EventType.HUMAN_HANDBACK,
    EventType.SESSION_CLOSED,
    # the approvals panel (drawn with the header, see header_context)
    EventType.APPROVAL_REQUESTED,
    EventType.APPROVAL_DECIDED,
}


@dataclass(frozen=True)
class SessionFilters:
    """The sessions list's filters, from a query string (page or websocket). Values outside the
    whitelists are dropped here (the page answers them with a 400 first: ``check_query``)."""

    status: str | None = None
    owner: str | None = None
    prefix: str | None = None
    cursor: str | None = None
    sort: str | None = None  # a key of session_list.SORTS; None: the view's default order
    view: str | None = None  # a key of session_list.VIEWS
    text: str | None = None  # searched inside the last events' text

    @classmethod
    def from_query(cls, query: Any) -> SessionFilters:
        status = (query.get("status") or "").strip() or None
        if status not in (None, *STATUSES):
            status = None
        sort = query.get("sort") or None
        # "show", not "view": the sessions socket's own "view" (list or overview) shares the query
        view = query.get("show") or None
        return cls(
            status=status,
            owner=(query.get("agent") or "").strip()[:256] or None,
            prefix=(query.get("q") or "").strip()[:256] or None,
            cursor=(query.get("cursor") or "").strip() or None,
            sort=sort if sort in SORTS and sort != DEFAULT_SORT else None,
            view=view if view in VIEWS else None,
            text=search_text(query.get("text")),
        )

    @property
    def effective_sort(self) -> str:
        # waiting for pickup: who has waited longest comes first
        return self.sort or ("activity" if self.view == "pickup" else DEFAULT_SORT)

    @property
    def effective_status(self) -> str | None | bool:
        """The status to list; False when the view and the status exclude each other."""
        if self.view == "pickup":
            return "waiting" if self.status in (None, "waiting") else False
        return self.status

    def matches(self, summary: SessionSummary) -> bool:
        """Whether a session belongs in this list (the event-text search is not checked)."""
        status = self.effective_status
        return (
            status is not False
            and (status is None or summary.status == status)
            and (self.owner is None or summary.owner == self.owner)
            and (self.prefix is None or summary.session_id.startswith(self.prefix))
            and (
                self.view != "unassigned"
                or (
                    summary.owner is None
                    and summary.controller is None
                    and summary.status != "closed"
                )
            )
        )

    def query_string(self, **overrides: str | None) -> str:
        values = {
            "show": self.view,
            "status": self.status,
            "agent": self.owner,
            "q": self.prefix,
            "text": self.text,
            "sort": self.sort,
            "cursor": self.cursor,
        }
        values.update(overrides)
        return urlencode({k: v for k, v in values.items() if v})


def dom_id(session_id: str) -> str:
    """A DOM id for a session's row (ids may hold any character; the digest is safe)."""
    return "session-" + hashlib.sha1(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def event_context(event: Event | dict) -> dict[str, Any]:
    """What a timeline row shows. Every field was written by an agent (possibly straight into
    Redis), so each is cleaned and bounded here (see ``display``): any event can be rendered."""
    if isinstance(event, dict):
        fields = event
    else:
        fields = {
            "id": event.id,
            "type": str(event.type),
            "data": event.data,
            "source": event.source,
            "timestamp": event.timestamp,
            "session_id": event.session_id,
        }
    event_id = fields.get("id") if is_stream_id(fields.get("id")) else "0-0"
    session_id = short_text(fields.get("session_id")) or ""
    timestamp = fields.get("timestamp")
    return {
        "id": event_id,
        "type": short_text(fields.get("type"), EVENT_TYPE_CHARS) or "",
        "source": short_text(fields.get("source")),
        "timestamp": timestamp if isinstance(timestamp, (int, float)) else None,
        "session_id": session_id,
        "payload": payload_display(fields.get("data")),
        "payload_query": payload_query(session_id, event_id=event_id),
    }


def event_item(event: Event | dict) -> dict[str, str]:
    """An event as live updates carry it: its id and type, and its timeline row, rendered once."""
    context = event_context(event)
    html = render_to_string("coordination/session_detail.html#event-row", {"ev": context})
    return {"id": context["id"], "type": context["type"], "html": html}


async def tolerant(problems: list[str], what: str, awaitable, default):
    """``awaitable``'s result, or ``default`` when what it reads was written around the core
    with the wrong Redis type: one bad key must not blind the whole page."""
    try:
        return await awaitable
    except CorruptStoredValue as exc:
        log.warning("%s shown empty: %s", what, exc)
        problems.append(what)
        return default


async def overview_context(index: SessionIndex) -> dict[str, Any]:
    problems: list[str] = []
    counts, queue, queue_total, agents, per_minute, approvals, pickup = await asyncio.gather(
        tolerant(problems, "sessions by status", index.counts_by_status(), {}),
        tolerant(
            problems, "the escalation queue", index.escalation_queue(limit=OVERVIEW_QUEUE), []
        ),
        tolerant(problems, "the escalation count", index.escalation_count(), 0),
        tolerant(problems, "agents", index.agents(limit=50), []),
        tolerant(problems, "events per minute", index.events_per_minute(), 0),
        tolerant(problems, "pending approvals", overview_approvals_context(index), {}),
        tolerant(
            problems,
            "the pickup queue",
            overview_pickup_context(index),
            {"pickup": [], "pickup_total": 0, "pickup_sla": pickup_sla()},
        ),
    )
    return {
        **approvals,
        **pickup,
        "index_problems": problems,
        "counts": counts,
        "total": sum(counts.values()),
        # why each waits, who holds it, its SLA clock (coordination/supervision/escalations.py)
        "queue": await queue_rows(queue),
        "queue_limit": OVERVIEW_QUEUE,
        "queue_total": queue_total,
        "agents": [a for a in agents if not a.stale],
        # known but silent: "stopped reporting" is not "never reported"
        "agents_stale": [a for a in agents if a.stale],
        "events_per_minute": per_minute,
    }


def render_overview_live(context: dict[str, Any], request=None) -> str:
    """The overview's live parts, each swapped in place by id."""
    parts = ("stats", "queue", "agents")
    return (
        "".join(
            render_to_string(
                f"coordination/overview.html#{p}", {**context, "oob": True}, request=request
            )
            for p in parts
        )
        + render_to_string(
            "coordination/_approvals.html#overview-approvals",
            {**context, "oob": True},
            request=request,
        )
        + render_to_string(
            "coordination/_pickup.html#overview-pickup", {**context, "oob": True}, request=request
        )
    )


def session_row_context(summary: SessionSummary) -> dict[str, Any]:
    return {"s": summary, "row_id": dom_id(summary.session_id)}


def render_session_row(
    summary: SessionSummary, *, oob: str = "", can_intervene: bool = False, request=None
) -> str:
    return render_to_string(
        "coordination/sessions.html#session-row",
        {**session_row_context(summary), "oob": oob, "can_intervene": can_intervene},
        request=request,
    )


async def header_context(session_id: str, summary: SessionSummary) -> dict[str, Any]:
    """What the session page's live header shows: the summary and the shared state."""
    problems: list[str] = []
    (state, state_more), agents, approvals, reason = await asyncio.gather(
        tolerant(problems, "shared state", state_rows(session_id), ([], 0)),
        tolerant(problems, "agents", session_index().agents(limit=200), []),
        tolerant(problems, "approvals", session_approvals_context(session_id), {}),
        escalation_reason(summary),
    )
    deadline = sla_deadline(summary)
    return {
        **approvals,
        # why it was escalated and what is left on its SLA clock (as on the overview)
        "escalation_reason": reason,
        "sla_deadline_ms": int(deadline * 1000) if deadline else None,
        "sla_clock": sla_clock_text(deadline, time.time()),
        "index_problems": problems,
        "s": summary,
        "state": state,
        "state_more": state_more,
        "agents_online": [a for a in agents if not a.stale],
        "agents_known": agents,  # reassign accepts these (online or stale)
    }


async def state_rows(session_id: str) -> tuple[list[dict[str, Any]], int]:
    """The shared-state table's rows, each value cut to ``PAYLOAD_DISPLAY_BYTES``, at most
    ``STATE_ROWS`` keys; and how many keys were left out."""
    values, versions, total = await read_state(session_id, STATE_ROWS)
    rows = []
    budget = STATE_BYTES
    for key in sorted(values)[:STATE_ROWS]:
        value, why = decode_stored_json(values[key])
        if why is not None:
            value = {"(invalid value)": value, "why": why}
        version = versions.get(key)
        shown = payload_display(
            value, limit=max(MIN_STATE_BYTES, min(PAYLOAD_DISPLAY_BYTES, budget))
        )
        budget -= len(shown["body"])
        rows.append(
            {
                "key": short_text(key),
                "payload": shown,
                "version": version
                if version is None or version.isdigit()
                else short_text(version, 40),
                "payload_query": payload_query(session_id, key=key),
            }
        )
    return rows, max(0, total - len(rows))


@sync_to_async
def recent_audit(session_id: str, limit: int = 20) -> list:
    from coordination.models import AuditEntry

    return list(AuditEntry.objects.filter(session_id=session_id)[:limit])


async def live_header_context(
    session_id: str, user, *, can_intervene: bool
) -> dict[str, Any] | None:
    """The header, the actions this user may take, and the audit trail, for one session."""
    summary = await session_index().get_session(session_id)
    if summary is None:
        return None
    context = await header_context(session_id, summary)
    context.update(
        can_intervene=can_intervene,
        me=f"human:{user.get_username()}",
        audit=await recent_audit(session_id),
    )
    return context


async def session_detail_context(session_id: str, summary: SessionSummary) -> dict[str, Any]:
    header, events, transcript = await asyncio.gather(
        header_context(session_id, summary),
        coordinator(session_id).events(newest_first=True, limit=TIMELINE_PAGE),
        transcript_context(session_id, summary),
    )
    return {
        **header,
        **transcript,
        "events": [event_context(e) for e in events],
        "older_cursor": events[-1].id if len(events) == TIMELINE_PAGE else None,
    }
