"""Supervision: what a person does to a session, as domain operations.

Take over, reply, hand back, release, reassign, close, decide an approval; the pickup queue and
the SLAs that say how long a session may wait. Each action goes through the core (atomic,
published with its actor) and leaves an ``AuditEntry``. No views and no HTTP here: the
dashboard and the API call these.

May import: ``coordination.core``, ``coordination.models``, ``coordination.foundation``, and
``coordination.realtime.groups`` (to tell open pages an audit row was added).
"""
