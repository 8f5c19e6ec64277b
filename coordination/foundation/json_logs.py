"""Structured logs: one JSON object per line, with the session id and actor when a record
carries them (``extra={"session_id": ..., "actor": ...}``), so a log pipeline can index them.

``RedactSecrets`` is the last line of defence for credentials: no code of ours logs a header,
a token or a cookie, but a library might (ninja did, in DEBUG, for a wrong-scheme token), so the
console handler masks API tokens (``coord_…``), Authorization values, ``METRICS_TOKEN``, and
session and CSRF cookie values in the message and any traceback before a line is written.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

FIELDS = ("session_id", "actor", "action", "outcome", "status", "path", "client_address")
MASK = "***"

_PATTERNS = (
    # API tokens, wherever they appear
    (re.compile(r"coord_[A-Za-z0-9_\-]{4,}"), "coord_" + MASK),
    # the credential after an auth scheme: "Bearer x", "Token x", "Basic x"
    (
        re.compile(r"(?i)\b(bearer|token|basic|digest)(\s+)[A-Za-z0-9._~+/=\-]{8,}"),
        r"\1\2" + MASK,
    ),
    # header, cookie and form values: "Authorization: x", "sessionid=x", "'csrftoken': 'x'"
    (
        re.compile(
            r"(?i)\b(authorization|proxy-authorization|http_authorization|cookie|http_cookie"
            r"|x-csrftoken|csrfmiddlewaretoken|csrftoken|sessionid|metrics_token)"
            r"(['\"]?\s*[:=]\s*['\"]?)[^\s'\",;]+"
        ),
        r"\1\2" + MASK,
    ),
)


def redact(text: str) -> str:
    """``text`` with every credential-looking value masked (and METRICS_TOKEN's value)."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    metrics_token = _metrics_token()
    if metrics_token:
        text = text.replace(metrics_token, MASK)
    return text


def _metrics_token() -> str:
    try:
        from django.conf import settings

        return str(getattr(settings, "METRICS_TOKEN", "") or "")
    except Exception:  # settings not configured (a script logging before Django is set up)
        return ""


class RedactSecrets(logging.Filter):
    """Masks credentials in a record's message and traceback (see ``redact``). The message is
    formatted once here and its arguments dropped, so no handler sees the raw values."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it for logging to report
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_text or record.exc_info:
            entry["error"] = redact(record.exc_text or self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)
