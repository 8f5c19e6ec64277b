"""Dashboard views: thin, async, reading the core through ``services``."""

from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .core import RedisUnavailable, redact_url
from .core.connection import UNAVAILABLE_ERRORS
from .services import session_index


async def overview(request: HttpRequest) -> HttpResponse:
    index = session_index()
    counts, queue, agents, per_minute = await asyncio.gather(
        index.counts_by_status(),
        index.escalation_queue(limit=20),
        index.agents(limit=20),
        index.events_per_minute(),
    )
    context = {
        "counts": counts,
        "total": sum(counts.values()),
        "queue": queue,
        "agents": [a for a in agents if not a.stale],
        "events_per_minute": per_minute,
        "redis_url_display": redact_url(settings.REDIS_URL),
        "nav": "overview",
    }
    return render(request, "coordination/overview.html", context)


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:  # any driver error means "not healthy"; the probe must not raise
        return False


@login_not_required
@never_cache
@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when Redis and the database answer; 503 naming the failing part otherwise."""
    checks = {"redis": "ok", "database": "ok"}
    try:
        await asyncio.wait_for(session_index().redis.ping(), timeout=2)
    except (RedisUnavailable, TimeoutError, *UNAVAILABLE_ERRORS):
        checks["redis"] = "unavailable"
    if not await sync_to_async(_database_ok)():
        checks["database"] = "unavailable"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", **checks}, status=200 if healthy else 503
    )
