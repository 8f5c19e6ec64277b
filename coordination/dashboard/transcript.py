"""The session page's transcript: the conversation read as a conversation.

Supervisors read what the customer, the agents and the humans said as text turns; tool calls,
approvals, notes and handoffs as compact cards; the escalation reason and who holds the session
above it. Built from the session's newest events (bounded), drawn by the page and redrawn by
the live push (``render_transcript``) with the same partial. Every value comes from agents:
it is cleaned and cut here (``display``) and escaped by the template.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.template.loader import render_to_string

from coordination.core import Event, EventType, SessionSummary
from coordination.core.events import event_from_fields
from coordination.foundation.core_clients import coordinator, session_index
from coordination.foundation.display import cut_chars, json_text, short_text

# The transcript reads at most this many of the newest events, and stops reading once their
# payloads passed READ_BUDGET bytes (agents may write large events); older ones are in the
# timeline.
TRANSCRIPT_EVENTS = 200
READ_PAGE = 25
READ_BUDGET = 256 * 1024
MAX_PAYLOAD = 64 * 1024  # larger payloads are not decoded for the transcript
TOO_LARGE = '{"text": "(too large to show here: see the timeline)"}'
# A page's live transcript is redrawn at most once per this many seconds (a flood of events
# costs a few renders a second, not one per batch); the last change is always drawn.
REDRAW_INTERVAL = 0.3
# A page with more than this many bytes still waiting to be sent gets no redraw until it caught
# up: a client that does not keep up is not sent extra frames (its rows come first).
REDRAW_BACKLOG = 256 * 1024

log = logging.getLogger(__name__)
TURN_CHARS = 4000  # a turn's text is cut here
CARD_CHARS = 300  # a card's summary (tool arguments, results) is cut here

# Event types whose arrival changes the transcript (the live push redraws it for these).
TRANSCRIPT_TYPES = frozenset(
    {
        "message",
        "note",
        "tool_result",
        "agent_completed",
        "escalated",
        "human_takeover",
        "human_handback",
        "handoff_ready",
        "handoff_claimed",
        "handoff_released",
        "handoff_reassigned",
        "approval_requested",
        "approval_decided",
        "session_closed",
        "error",
    }
)

ROLES = {"customer": "customer", "agent": "agent", "human": "human"}


def _text(value: Any, limit: int = TURN_CHARS) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        value = json_text(value)
    return short_text(value, limit) or ""


def _who(value: Any) -> str:
    return (short_text(value, 80) or "").removeprefix("human:")


def _summary(value: Any) -> str:
    return cut_chars(json_text(value), CARD_CHARS) if value not in (None, "", {}) else ""


def turn(event: Event) -> dict[str, Any] | None:
    """One event as a transcript item, or None for events the transcript leaves out (state
    changes, presence, run starts: they stay in the timeline)."""
    etype = getattr(event.type, "value", str(event.type))
    data = event.data if isinstance(event.data, dict) else {}
    base = {"id": event.id, "when": event.timestamp, "type": etype}
    source = _who(event.source)
    if etype == "message":
        role = ROLES.get(data.get("role"), "agent")
        who = {
            "customer": "Customer",
            "human": _who(data.get("from")) or source or "supervisor",
        }.get(role, source or "agent")
        return {**base, "kind": "turn", "role": role, "who": who, "text": _text(data.get("text"))}
    if etype == "agent_completed":
        output = data.get("output")
        if output in (None, ""):
            return None
        agent = _who(data.get("agent_id")) or source
        return {**base, "kind": "card", "card": "run", "who": agent, "text": _text(output, 300)}
    if etype == "note":
        return {
            **base,
            "kind": "card",
            "card": "note",
            "who": _who(data.get("by")) or source,
            "text": _text(data.get("text")),
        }
    if etype == "tool_result":
        return {
            **base,
            "kind": "card",
            "card": "tool",
            "who": source,
            "title": short_text(data.get("tool") or data.get("name"), 80) or "tool",
            "text": _summary(data.get("result", data.get("output"))),
        }
    if etype == "approval_requested":
        return {
            **base,
            "kind": "card",
            "card": "approval",
            "who": _who(data.get("agent_id")) or source,
            "title": short_text(data.get("action"), 80) or "action",
            "text": _summary(data.get("args")),
            "reason": _text(data.get("reason"), 300),
        }
    if etype == "approval_decided":
        approved = data.get("approved") is True
        return {
            **base,
            "kind": "card",
            "card": "decision",
            "approved": approved,
            "who": _who(data.get("by")) or source,
            "title": short_text(data.get("action"), 80) or "",
            "text": _text(data.get("message"), 300),
        }
    line = _system_line(etype, data, source)
    if line is None:
        return None
    return {**base, "kind": "system", "text": line}


def _system_line(etype: str, data: dict[str, Any], source: str) -> str | None:
    if etype == "escalated":
        return f"Escalated by {source or 'an agent'}: {_text(data.get('reason'), 300)}"
    if etype == "human_takeover":
        return f"{_who(data.get('supervisor')) or source} took the session over"
    if etype == "human_handback":
        to = _who(data.get("to_agent")) or "the queue"
        line = f"{_who(data.get('by')) or source} handed the session back to {to}"
        resolution = _text(data.get("resolution"), 300)
        return f"{line}. Resolution: {resolution}" if resolution else line
    if etype == "handoff_ready":
        return f"Handed off to {_who(data.get('to_agent')) or 'any agent'}"
    if etype == "handoff_claimed":
        return f"{_who(data.get('agent_id')) or source} picked the session up"
    if etype == "handoff_released":
        return f"{_who(data.get('agent_id')) or source}'s claim released"
    if etype == "handoff_reassigned":
        return f"Reassigned to {_who(data.get('to_agent'))} by {_who(data.get('by')) or source}"
    if etype == "session_closed":
        reason = _text(data.get("reason"), 200)
        return "Session closed" + (f": {reason}" if reason else "")
    if etype == "error":
        return f"Error from {source or 'an agent'}: {_text(data.get('message') or data, 300)}"
    return None


def _escalation_reason(events: list[Event]) -> str | None:
    for event in reversed(events):  # newest escalation first
        if getattr(event.type, "value", None) == "escalated" and isinstance(event.data, dict):
            return _text(event.data.get("reason"), 300) or None
    return None


async def _newest_events(session_id: str) -> tuple[list[Event], bool]:
    """The newest events, oldest first, within the count and byte budgets; and whether older
    ones were left out. Read raw, so a payload over ``MAX_PAYLOAD`` is never decoded here (the
    timeline shows it cut): the transcript costs a bounded read whatever agents wrote."""
    coord = coordinator(session_id)
    key = coord.keys.session(session_id).events
    newest: list[Event] = []
    size, start = 0, "+"
    while len(newest) < TRANSCRIPT_EVENTS and size <= READ_BUDGET:
        limit = min(READ_PAGE, TRANSCRIPT_EVENTS - len(newest))
        rows = await coord.call(coord.redis.xrevrange(key, start, "-", count=limit))
        for entry_id, fields in rows:
            raw = fields.get("d") or ""
            size += len(raw) if isinstance(raw, (str, bytes)) else 0
            if isinstance(raw, (str, bytes)) and len(raw) > MAX_PAYLOAD:
                fields = {**fields, "d": TOO_LARGE}
            newest.append(event_from_fields(session_id, entry_id, fields))
        if len(rows) < limit:
            return list(reversed(newest)), False
        start = f"({rows[-1][0]}"
    return list(reversed(newest)), True


async def transcript_context(session_id: str, summary: SessionSummary) -> dict[str, Any]:
    """The transcript's items (oldest first), the escalation reason and who holds the session."""
    events, cut = await _newest_events(session_id)
    items = [item for item in (turn(e) for e in events) if item is not None]
    return {
        "transcript": items,
        "transcript_cut": cut,
        "transcript_escalation": (
            _escalation_reason(events) if summary.status == "escalated" else None
        ),
        "event_types": [t.value for t in EventType],  # the timeline's filter
    }


async def render_transcript(session_id: str) -> str:
    """The transcript as an out-of-band swap, for the live push."""
    summary = await session_index().get_session(session_id)
    if summary is None:
        return ""
    context = {"s": summary, "oob": True, **await transcript_context(session_id, summary)}
    return render_to_string("coordination/_transcript.html#transcript", context)


class LiveTranscript:
    """One page's live transcript: ``poke()`` on new events; the redraw is sent at most once per
    ``REDRAW_INTERVAL``, and a poke during a redraw brings one more, so the last change shows.
    ``backlog()`` is how many bytes wait for the client; past ``REDRAW_BACKLOG`` it waits."""

    def __init__(
        self,
        session_id: str,
        send: Callable[[str], Awaitable[None]],
        backlog: Callable[[], float],
    ) -> None:
        self.session_id = session_id
        self.send = send
        self.backlog = backlog
        self.task: asyncio.Task | None = None
        self.again = False

    def poke(self) -> None:
        if self.task is not None and not self.task.done():
            self.again = True
            return
        self.task = asyncio.create_task(self._redraw())

    async def _redraw(self) -> None:
        while True:
            self.again = False
            await asyncio.sleep(REDRAW_INTERVAL)  # a rate limit: events arriving now join in
            if self.backlog() > REDRAW_BACKLOG:
                self.again = True  # try again once the client has read its rows
                continue
            try:
                html = await render_transcript(self.session_id)
                if html:
                    await self.send(html)
            except Exception as exc:  # the page still gets its timeline rows
                log.warning("transcript redraw of %r failed: %r", self.session_id[:100], exc)
                return
            if not self.again:
                return

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
