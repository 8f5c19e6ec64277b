"""Context builders and partial rendering shared by views and websocket consumers, so a row
looks the same whether it came with the page or by live update."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.template.loader import render_to_string

from .core import STATUSES, Event, EventType, SessionIndex, SessionSummary
from .services import coordinator, session_index

TIMELINE_PAGE = 50
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
}


@dataclass(frozen=True)
class SessionFilters:
    """The sessions list's filters, from a query string (page or websocket)."""

    status: str | None = None
    owner: str | None = None
    prefix: str | None = None
    cursor: str | None = None

    @classmethod
    def from_query(cls, query: Any) -> SessionFilters:
        status = (query.get("status") or "").strip() or None
        if status not in (None, *STATUSES):
            status = None
        return cls(
            status=status,
            owner=(query.get("agent") or "").strip()[:256] or None,
            prefix=(query.get("q") or "").strip()[:256] or None,
            cursor=(query.get("cursor") or "").strip() or None,
        )

    def matches(self, summary: SessionSummary) -> bool:
        return (
            (self.status is None or summary.status == self.status)
            and (self.owner is None or summary.owner == self.owner)
            and (self.prefix is None or summary.session_id.startswith(self.prefix))
        )

    def query_string(self, **overrides: str | None) -> str:
        values = {
            "status": self.status,
            "agent": self.owner,
            "q": self.prefix,
            "cursor": self.cursor,
        }
        values.update(overrides)
        return urlencode({k: v for k, v in values.items() if v})


def dom_id(session_id: str) -> str:
    """A DOM id for a session's row (ids may hold any character; the digest is safe)."""
    return "session-" + hashlib.sha1(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def event_context(event: Event | dict) -> dict[str, Any]:
    if isinstance(event, dict):
        data = event
        etype = str(data["type"])
        return {
            "id": data["id"],
            "type": etype,
            "data": data["data"],
            "source": data.get("source"),
            "timestamp": data["timestamp"],
            "session_id": data["session_id"],
        }
    return {
        "id": event.id,
        "type": str(event.type),
        "data": event.data,
        "source": event.source,
        "timestamp": event.timestamp,
        "session_id": event.session_id,
    }


def event_item(event: Event | dict) -> dict[str, str]:
    """An event as live updates carry it: its id and type, and its timeline row, rendered once."""
    context = event_context(event)
    html = render_to_string("coordination/session_detail.html#event-row", {"ev": context})
    return {"id": context["id"], "type": context["type"], "html": html}


async def overview_context(index: SessionIndex) -> dict[str, Any]:
    counts, queue, queue_total, agents, per_minute = await asyncio.gather(
        index.counts_by_status(),
        index.escalation_queue(limit=20),
        index.escalation_count(),
        index.agents(limit=50),
        index.events_per_minute(),
    )
    return {
        "counts": counts,
        "total": sum(counts.values()),
        "queue": queue,
        "queue_total": queue_total,
        "agents": [a for a in agents if not a.stale],
        "events_per_minute": per_minute,
    }


def render_overview_live(context: dict[str, Any], request=None) -> str:
    """The overview's live parts, each swapped in place by id."""
    parts = ("stats", "queue", "agents")
    return "".join(
        render_to_string(
            f"coordination/overview.html#{p}", {**context, "oob": True}, request=request
        )
        for p in parts
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
    state, agents = await asyncio.gather(
        coordinator(session_id).get_state_versions(), session_index().agents(limit=200)
    )
    return {
        "s": summary,
        "state": [(k, v, ver) for k, (v, ver) in state.items()],
        "agents_online": [a for a in agents if not a.stale],
    }


@sync_to_async
def recent_audit(session_id: str, limit: int = 20) -> list:
    from .models import AuditEntry

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
    header, events = await asyncio.gather(
        header_context(session_id, summary),
        coordinator(session_id).events(newest_first=True, limit=TIMELINE_PAGE),
    )
    return {
        **header,
        "events": [event_context(e) for e in events],
        "older_cursor": events[-1].id if len(events) == TIMELINE_PAGE else None,
    }
