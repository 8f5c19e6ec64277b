"""What every part of the web side stands on: the handles on the core configured from
settings (``core_clients``), sign-in, the CSP middleware, the cache, JSON logs, metrics and
telemetry, origin checks, error reports without secrets, Redis ACL users.

May import: ``coordination.core``, ``coordination.models``; never the dashboard, realtime or
API layers (they import this).
"""
