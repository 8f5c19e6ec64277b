"""The supervisor's limits, one home each: the dashboard's forms, the JSON API's schemas and
the domain operations all import them from here, so a page and the API refuse the same input.

The session statuses are the core's (``coordination.core.keys.STATUSES``); the length of an
approval's message is the core's too (``coordination.core.approvals.MAX_MESSAGE_CHARS``).
"""

from __future__ import annotations

# A reply, note or hand-back resolution a supervisor writes (it reaches the agent).
MAX_TEXT = 4000
# The optional reason given for a take-over, release, reassign or close (the audit trail).
MAX_REASON = 500
# Sessions one bulk action may touch: each is its own audited step, all in one request.
MAX_BULK = 100
