"""Template helpers: relative times with the absolute time on hover, SLA checks, JSON display."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from django import template
from django.utils.html import format_html

from coordination.core import SessionSummary
from coordination.dashboard.session_urls import quote_segment
from coordination.foundation.display import (
    clean_text,
    cut_chars,
    humanize_age,
    json_text,
    payload_display,
)
from coordination.supervision.colleagues import offered_actions as _offered_actions
from coordination.supervision.sla import is_over_sla, sla_deadline, sla_seconds

register = template.Library()


def duration(seconds: float) -> str:
    """A length of time: "45s", "5m", "2h", "1h 30m"."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return " ".join(p for p in parts if p) or "0s"


@register.simple_tag
def reltime(timestamp: float | None) -> str:
    """``<time>`` with a relative label; app.js keeps the label current."""
    if not timestamp or not isinstance(timestamp, (int, float)):
        return "—"
    try:  # stored times come from agents too: inf or the year 30000 cannot be shown
        absolute = datetime.fromtimestamp(timestamp, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return "(invalid time)"
    return format_html(
        '<time datetime="{}" title="{}" data-ts="{}">{}</time>',
        absolute.isoformat(),
        absolute.strftime("%Y-%m-%d %H:%M:%S UTC"),
        int(timestamp * 1000),
        humanize_age(time.time() - timestamp),
    )


@register.filter
def offered_actions(summary: SessionSummary, me: str) -> frozenset[str]:
    """What the session page offers ``me`` (supervision/colleagues.py: the rule bulk actions
    and the API enforce)."""
    return _offered_actions(summary, me or "")


@register.filter
def over_sla(summary: SessionSummary) -> bool:
    return is_over_sla(summary)


@register.simple_tag
def sla_badge(summary: SessionSummary) -> str:
    """The escalation's queue and SLA, and an "over SLA" tag that the page's script shows
    once the deadline passes (so it appears without a redraw)."""
    deadline = sla_deadline(summary)
    if deadline is None:
        return ""
    return format_html(
        '<span class="muted small">{} · SLA {}</span> '
        '<span class="tag tag-warn" data-sla-deadline="{}"{}>over SLA</span>',
        summary.escalation_queue or "default queue",
        duration(sla_seconds(summary.escalation_queue)),
        int(deadline * 1000),
        "" if is_over_sla(summary) else " hidden",
    )


@register.filter
def pretty_json(value: object) -> str:
    """Indented JSON text, cut to ``PAYLOAD_DISPLAY_BYTES``; the template escapes it like any
    other string. Never raises, whatever an agent stored (see ``coordination.foundation.display``)."""
    return payload_display(value)["body"]


@register.filter
def json_preview(value: object, length: int = 120) -> str:
    """One line of compact JSON, cut to ``length`` characters."""
    return cut_chars(json_text(value), length)


@register.filter
def clean(value: object) -> object:
    """Text with lone surrogates replaced (a response holding one cannot be encoded)."""
    return clean_text(value) if isinstance(value, str) else value


@register.filter
def ms(timestamp: float | None) -> int:
    try:
        return int(timestamp * 1000) if timestamp else 0
    except (TypeError, ValueError, OverflowError):
        return 0


@register.filter
def session_segment(session_id: str) -> str:
    """A session id as one URL path segment, for URLs ``{% url %}`` cannot build (the
    websocket's); the same scheme as the ``sid`` converter (coordination/dashboard/session_urls.py)."""
    return quote_segment(session_id)
