"""Structured logs: one JSON object per line, with the session id and actor when a record
carries them (``extra={"session_id": ..., "actor": ...}``), so a log pipeline can index them."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

FIELDS = ("session_id", "actor", "action", "outcome", "status", "path", "client_address")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
