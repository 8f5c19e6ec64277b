"""Channel-layer group names, and the one announcement other layers send to live pages.

Kept apart from the relay so that ``coordination.supervision`` can announce an audit row
without importing the relay (and, through it, the dashboard's partials).
"""

from __future__ import annotations

import hashlib
import logging

from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

SESSIONS_GROUP = "coord.sessions"


def session_group(session_id: str) -> str:
    """Channel-layer group names allow few characters, so a session's group is its digest."""
    return "coord.session." + hashlib.sha1(session_id.encode("utf-8", "surrogatepass")).hexdigest()


async def announce_audit(session_id: str) -> None:
    """Tell the session's open pages, in every process, that its audit trail grew. Sent after
    the audit row is saved (the intervention's event may reach the pages before it is)."""
    try:
        await get_channel_layer().group_send(session_group(session_id), {"type": "session.audit"})
    except Exception as exc:  # the action is done and audited; only the live refresh is lost
        log.warning("audit refresh for session %r not sent: %s", session_id, exc)
