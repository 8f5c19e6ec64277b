"""The pickup queue: sessions in ``waiting`` (a released claim, a hand-back to the queue, a
handoff nobody has claimed yet), oldest first, with their own SLA.

A released session used to sit in ``waiting`` unnoticed; here it is listed on the overview,
highlighted and alerted once it waits longer than ``COORDINATION_PICKUP_SLA`` seconds, and
counted in /metrics. The waiting time is measured from the session's latest event (the index
scores a status set by it), so a note written while it waits restarts the clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from coordination.core import SessionIndex, SessionSummary

OVERVIEW_PICKUP = 20


def pickup_sla() -> float:
    """Seconds a session may wait for an agent before it is highlighted and alerted."""
    return float(getattr(settings, "COORDINATION_PICKUP_SLA", 60))


@dataclass(frozen=True)
class WaitingSession:
    summary: SessionSummary
    since: float  # when it started waiting (its latest event), seconds since the epoch
    sla: float

    @property
    def session_id(self) -> str:
        return self.summary.session_id

    @property
    def deadline_ms(self) -> int:
        return int((self.since + self.sla) * 1000)

    def over_sla(self, now: float | None = None) -> bool:
        return (now or time.time()) > self.since + self.sla


async def waiting_for_pickup(
    index: SessionIndex, limit: int = OVERVIEW_PICKUP
) -> tuple[list[WaitingSession], int]:
    """The sessions waiting longest (oldest first, at most ``limit``) and how many wait."""
    key = index.keys.status["waiting"]
    rows = await index.call(index.redis.zrange(key, 0, max(1, limit) - 1, withscores=True))
    total = await index.call(index.redis.zcard(key))
    summaries = {s.session_id: s for s in await index.get_sessions([sid for sid, _ in rows])}
    sla = pickup_sla()
    waiting = [
        WaitingSession(summaries[sid], _since(score, summaries[sid]), sla)
        for sid, score in rows
        # read between two calls: a session that moved on meanwhile is not shown as waiting
        if sid in summaries and summaries[sid].status == "waiting"
    ]
    return waiting, max(total, len(waiting))


# Scores are milliseconds the core wrote; anyone holding REDIS_URL can write others
# (``inf``, negatives, year 30000) and one must not break the overview for everyone.
_LATEST_SANE_MS = 32503680000000  # year 3000


def _since(score: float, summary: SessionSummary) -> float:
    if math.isfinite(score) and 0 <= score <= _LATEST_SANE_MS:
        return score / 1000.0
    return summary.last_activity or time.time()


async def overview_pickup_context(index: SessionIndex) -> dict[str, Any]:
    waiting, total = await waiting_for_pickup(index)
    now = time.time()
    rows = [{"w": w, "s": w.summary, "over": w.over_sla(now)} for w in waiting]
    return {"pickup": rows, "pickup_total": total, "pickup_sla": pickup_sla()}
