"""The escalation queue as a supervisor reads it: why each session asked for a human, who holds
it now, and how long is left on its SLA clock.

The session index keeps when a session was escalated, not why: the reason is in the
``escalated`` event itself. It is read from the stream starting at the escalation's time (the
event is the first one there, a few entries at most), once per escalation: the answer is kept in
a small bounded cache keyed by session and escalation time, so a live overview redrawn on every
event does not re-read twenty streams each time.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

from django.conf import settings

from coordination.core import CorruptStoredValue, EventType, SessionSummary
from coordination.core.events import event_from_fields
from coordination.foundation.core_clients import coordinator
from coordination.foundation.display import short_text
from coordination.supervision.sla import sla_deadline

# The overview lists this many escalations (oldest first) and links to the rest.
OVERVIEW_QUEUE = 20
REASON_CHARS = 160
# entries read after the escalation's time to find its event (others published in the same
# millisecond, or a racing writer, come first at most a few times)
_SCAN = 10
_CACHE_SIZE = 2048
_reasons: OrderedDict[tuple[str, str, float], str | None] = OrderedDict()


async def escalation_reason(summary: SessionSummary) -> str | None:
    """The ``reason`` of the event that escalated the session (cleaned and cut: an agent wrote
    it), or None when it gave none or the event is gone."""
    if not summary.escalated_at:
        return None
    # the namespace too: one process may serve several (tests do)
    key = (settings.COORDINATION_NAMESPACE, summary.session_id, summary.escalated_at)
    if key in _reasons:
        _reasons.move_to_end(key)
        return _reasons[key]
    coord = coordinator(summary.session_id)
    stream = coord.keys.session(summary.session_id).events
    # a millisecond early: the event's id and the escalation's time come from one script's
    # clock, but a millisecond may tick between them
    start = f"{max(0, int(summary.escalated_at * 1000) - 1)}-0"
    try:
        rows = await coord.call(coord.redis.xrange(stream, start, "+", count=_SCAN))
    except CorruptStoredValue:  # the stream key was overwritten around the core
        return None
    reason = None
    for entry_id, fields in rows:
        event = event_from_fields(summary.session_id, entry_id, fields)
        if str(event.type) == EventType.ESCALATED.value:
            raw = event.data.get("reason") if isinstance(event.data, dict) else None
            reason = short_text(raw, REASON_CHARS) if raw not in (None, "") else None
            break
    _reasons[key] = reason
    while len(_reasons) > _CACHE_SIZE:
        _reasons.popitem(last=False)
    return reason


def sla_clock_text(deadline: float | None, now: float) -> str:
    """ "4m left", "12s left", "3m over": what is left on the SLA clock (app.js counts it
    down with the same wording)."""
    if deadline is None:
        return ""
    left = int(deadline - now)
    span = abs(left)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if span >= size:
            label = f"{span // size}{unit}"
            break
    else:
        label = f"{span}s"
    return f"{label} left" if left >= 0 else f"{label} over"


def holder(summary: SessionSummary) -> dict[str, str] | None:
    """Who holds the session now: a person in control, else the agent with the claim, else
    the owner; None when nobody does."""
    if summary.controller:
        return {"kind": "human", "name": summary.controller}
    if summary.claim_agent:
        return {"kind": "claim", "name": summary.claim_agent}
    if summary.owner:
        return {"kind": "owner", "name": summary.owner}
    return None


async def queue_rows(queue: list[SessionSummary], now: float | None = None) -> list[dict[str, Any]]:
    """The overview's escalation rows: the summary, its reason, its holder and SLA clock."""
    now = now or time.time()
    reasons = await asyncio.gather(*(escalation_reason(s) for s in queue))
    rows = []
    for summary, reason in zip(queue, reasons, strict=True):
        deadline = sla_deadline(summary)
        rows.append(
            {
                "s": summary,
                "session_id": summary.session_id,
                "reason": reason,
                "holder": holder(summary),
                "deadline_ms": int(deadline * 1000) if deadline else None,
                "over": deadline is not None and now > deadline,
                "sla_clock": sla_clock_text(deadline, now),
            }
        )
    return rows
