"""Template helpers: relative times with the absolute time on hover, SLA checks, JSON display."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from django import template
from django.conf import settings
from django.utils.html import format_html

register = template.Library()


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
def over_sla(timestamp: float | None) -> bool:
    return bool(timestamp) and time.time() - timestamp > settings.COORDINATION_ESCALATION_SLA


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
