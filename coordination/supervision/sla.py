"""Escalation SLAs: how long an escalated session may wait, per escalation queue."""

from __future__ import annotations

import time

from django.conf import settings

from coordination.core import SessionSummary


def sla_seconds(queue: str | None) -> float:
    """The queue's own SLA (``COORDINATION_ESCALATION_SLAS``), else the default one."""
    return settings.COORDINATION_ESCALATION_SLAS.get(
        queue or "", settings.COORDINATION_ESCALATION_SLA
    )


def sla_deadline(summary: SessionSummary) -> float | None:
    """When the session's escalation goes over its SLA (None if it is not escalated)."""
    if not summary.escalated_at:
        return None
    return summary.escalated_at + sla_seconds(summary.escalation_queue)


def is_over_sla(summary: SessionSummary, now: float | None = None) -> bool:
    deadline = sla_deadline(summary)
    return deadline is not None and (now or time.time()) > deadline
