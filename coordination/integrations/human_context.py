"""What people decided in a session, read back for the agent that continues it.

A supervisor who takes a session over replies to the customer, writes notes and hands the
session back with a resolution ("refund approved"). An agent that then starts from the
customer's first message alone asks again for what a human already settled (and escalates
again for the same reason). ``read_human_context`` collects those decisions from the session's
events and ``HumanContext.as_input`` turns them into model input, so the agent continues from
them; ``HumanContext.resolved`` names the escalation reasons a human has dealt with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from coordination.core import AgentCoordinator, EventType

# Sessions are read oldest first in pages; this bounds the work for a very long session.
MAX_EVENTS = 5000
PAGE = 500
MAX_TEXT = 2000  # each human text given to the model is cut here


def _text(value: Any) -> str:
    return value[:MAX_TEXT] if isinstance(value, str) else ""


@dataclass
class HumanContext:
    """The human side of a session since its latest takeover, and what people resolved."""

    replies: list[tuple[str, str]] = field(default_factory=list)  # (who, text)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (who, text)
    resolution: str | None = None  # from the latest hand-back, when it carried one
    handed_back_by: str | None = None
    # escalation reasons a human dealt with (a hand-back, or a supervisor's reassignment)
    resolved: set[str] = field(default_factory=set)

    @property
    def handed_back(self) -> bool:
        return self.handed_back_by is not None

    def summary(self) -> str:
        """One message for the model: what the humans decided and said, newest decision first."""
        lines = []
        who = (self.handed_back_by or "a supervisor").removeprefix("human:")
        if self.resolution:
            lines.append(f"Resolution by {who}: {self.resolution}")
        elif self.handed_back:
            lines.append(f"A human supervisor ({who}) handled this session and handed it back.")
        for person, text in self.replies:
            lines.append(f"{person.removeprefix('human:')} told the customer: {text}")
        for person, text in self.notes:
            lines.append(f"Note from {person.removeprefix('human:')}: {text}")
        if self.resolved:
            reasons = ", ".join(sorted(self.resolved))
            lines.append(f"Already resolved by a human, do not escalate again for: {reasons}.")
        if lines:
            lines.append("Continue from their decision.")
        return "\n".join(lines)

    def as_input(self, query: str) -> str | list[dict[str, Any]]:
        """Model input: the customer's query, then (when people acted) what they decided."""
        summary = self.summary()
        if not summary:
            return query
        return [
            {"role": "user", "content": query},
            {"role": "user", "content": summary},
        ]


async def read_human_context(coordinator: AgentCoordinator) -> HumanContext:
    """Read the session's events (bounded) and collect the people's replies, notes, hand-back
    resolution and the escalation reasons a hand-back settled."""
    context = HumanContext()
    pending_reasons: set[str] = set()  # escalated, not yet followed by a hand-back
    for event in await _newest_events(coordinator):
        data = event.data if isinstance(event.data, dict) else {}
        if event.type is EventType.ESCALATED:
            reason = data.get("reason")
            if isinstance(reason, str) and reason:
                pending_reasons.add(reason)
        elif event.type is EventType.HANDOFF_REASSIGNED and str(data.get("by") or "").startswith(
            "human:"
        ):
            # a supervisor gave the escalated session to an agent: that settles it too
            context.resolved |= pending_reasons
            pending_reasons.clear()
        elif event.type is EventType.HUMAN_TAKEOVER:
            # a new takeover: what counts is what people said during this one
            context.replies.clear()
            context.notes.clear()
        elif event.type is EventType.HUMAN_HANDBACK:
            context.resolved |= pending_reasons
            pending_reasons.clear()
            context.handed_back_by = str(data.get("by") or event.source or "")
            resolution = _text(data.get("resolution")).strip()
            context.resolution = resolution or None
        elif event.type is EventType.MESSAGE and data.get("role") == "human":
            who = str(data.get("from") or event.source or "supervisor")
            if text := _text(data.get("text")).strip():
                context.replies.append((who, text))
        elif event.type is EventType.NOTE:
            who = str(data.get("by") or event.source or "supervisor")
            if text := _text(data.get("text")).strip():
                context.notes.append((who, text))
    return context


async def _newest_events(coordinator: AgentCoordinator) -> list:
    """The newest ``MAX_EVENTS`` events, oldest first: in a long session the latest takeover,
    replies and hand-back are what matter (reading from the start, they fell past the bound)."""
    newest: list = []
    before = None
    while len(newest) < MAX_EVENTS:
        page = await coordinator.events(newest_first=True, before=before, limit=PAGE)
        newest.extend(page)
        if len(page) < PAGE:
            break
        before = page[-1].id
    newest.reverse()
    return newest
