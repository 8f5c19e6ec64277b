"""Template helpers: relative times with the absolute time on hover, SLA checks, JSON display."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from django import template
from django.utils.html import format_html

from ..core import SessionSummary
from ..sla import is_over_sla, sla_deadline, sla_seconds

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


def humanize_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 5:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


@register.simple_tag
def reltime(timestamp: float | None) -> str:
    """``<time>`` with a relative label; app.js keeps the label current."""
    if not timestamp:
        return "—"
    absolute = datetime.fromtimestamp(timestamp, tz=UTC)
    return format_html(
        '<time datetime="{}" title="{}" data-ts="{}">{}</time>',
        absolute.isoformat(),
        absolute.strftime("%Y-%m-%d %H:%M:%S UTC"),
        int(timestamp * 1000),
        humanize_age(time.time() - timestamp),
    )


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
    """Indented JSON text; the template escapes it like any other string."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


@register.filter
def json_preview(value: object, length: int = 120) -> str:
    """One line of compact JSON, cut to ``length`` characters."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= length else text[: length - 1] + "…"


@register.filter
def ms(timestamp: float | None) -> int:
    return int(timestamp * 1000) if timestamp else 0
