"""Agent-written values made safe to show: one place that cleans text, bounds it in bytes and
turns any stored value into display text, used by views, fragments, consumers and the API so a
row looks the same live and on reload.

Agents are untrusted and can write Redis directly, so nothing here assumes a type: a value is
shown as what it is. Escaping is left to the templates (autoescape); this module makes sure
they receive text that can be encoded (no lone surrogates) and is of a bounded size.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from coordination.core.events import clean_text

# A payload or state value is shown up to this many bytes of its JSON text; the rest is behind
# the "show the whole value" link (coordination:payload).
PAYLOAD_DISPLAY_BYTES = 16 * 1024
PREVIEW_CHARS = 120
# Ids, event types and sources the core accepts are at most 256 characters.
SHORT_TEXT_CHARS = 256

__all__ = [
    "PAYLOAD_DISPLAY_BYTES",
    "clean_deep",
    "clean_text",
    "cut_bytes",
    "json_text",
    "payload_display",
    "short_text",
]


def short_text(value: object, limit: int = SHORT_TEXT_CHARS) -> str | None:
    """An id, type or name for display: text cleaned and cut to ``limit`` characters; a value
    that is not text is shown as ``(invalid: ...)``; None stays None."""
    if value is None:
        return None
    if not isinstance(value, str):
        return f"(invalid: {cut_chars(json_text(value), 60)})"
    return cut_chars(clean_text(value), limit)


def cut_chars(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cut_bytes(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary)."""
    if len(text) <= limit // 4:  # even at 4 bytes a character it fits: skip the encoding
        return text, False
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text, False
    return raw[:limit].decode("utf-8", "ignore"), True


def json_text(value: Any, *, pretty: bool = False, tight: bool = False) -> str:
    """JSON text of any value read from Redis, never raising (lone surrogates replaced):
    indented (``pretty``), as the core stores it (``tight``), or one readable line."""
    separators = (",", ":") if tight else (", ", ": ")
    try:
        if pretty:
            text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=repr)
        else:
            text = json.dumps(value, ensure_ascii=False, separators=separators, default=repr)
    except (TypeError, ValueError, RecursionError):
        # mixed key types cannot be sorted; nesting past the interpreter's limit cannot be dumped
        try:
            text = json.dumps(value, ensure_ascii=False, default=repr)
        except (TypeError, ValueError, RecursionError):
            text = f"(a {type(value).__name__} that cannot be shown as JSON)"
    return clean_text(text)


def clean_deep(value: Any, depth: int = 0) -> Any:
    """``value`` with every string (keys too) cleaned of lone surrogates, for JSON output."""
    if isinstance(value, str):
        return clean_text(value)
    if depth > 200:
        return None
    if isinstance(value, dict):
        return {clean_deep(str(k), depth): clean_deep(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_deep(v, depth + 1) for v in value]
    return value


def payload_display(value: Any, *, limit: int = PAYLOAD_DISPLAY_BYTES) -> dict[str, Any]:
    """How a payload or state value is shown: a one-line preview, the indented JSON cut to
    ``limit`` bytes, whether it was cut, and the size of the whole value's JSON text."""
    compact = json_text(value)
    size = len(compact.encode("utf-8"))
    # Indenting a large value only to cut it would waste time: large ones show compact JSON.
    body = json_text(value, pretty=True) if size <= limit else compact
    body, truncated = cut_bytes(body, limit)
    return {
        "preview": cut_chars(compact, PREVIEW_CHARS),
        "body": body + ("…" if truncated else ""),
        "truncated": truncated,
        "size": size,
    }


def payload_query(session_id: str, *, event_id: str | None = None, key: str | None = None) -> str:
    """The query string of the whole-value view for one event's payload or one state key."""
    params = {"session": clean_text(session_id)}
    if event_id is not None:
        params["event"] = event_id
    if key is not None:
        params["key"] = clean_text(key)
    return urlencode(params)


def humanize_age(seconds: float) -> str:
    """ "just now", "5s ago", "3m ago", "2h ago", "4d ago": one wording for every page."""
    seconds = max(0, int(seconds))
    if seconds < 5:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
