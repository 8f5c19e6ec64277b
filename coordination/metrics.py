"""Prometheus ``/metrics``: gauges read from Redis at scrape time, so any worker process
answers with the same figures (per-process counters would disagree across workers)."""

from __future__ import annotations

import asyncio
import hmac
import time

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .live import Relay, parse_event_id
from .services import session_index


class _Snapshot:
    """A collector over values gathered beforehand (prometheus_client collects synchronously)."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        yield from self.families


async def gather_families() -> list:
    index = session_index()
    relay = Relay(index)
    counts, queue_len, oldest, agents, per_minute, newest, cursor = await asyncio.gather(
        index.counts_by_status(),
        index.escalation_count(),
        index.escalation_queue(limit=1),
        index.agents(limit=1000),
        index.events_per_minute(),
        index.latest_feed_id(),
        index.call(index.redis.get(relay.cursor_key)),
    )
    sessions = GaugeMetricFamily(
        "coordinator_sessions", "Sessions in the index by status", labels=["status"]
    )
    for status, count in counts.items():
        sessions.add_metric([status], count)
    waiting = oldest[0].escalated_at if oldest and oldest[0].escalated_at else None
    lag_ms = 0.0
    if cursor and newest != "0-0":
        lag_ms = max(0, parse_event_id(newest)[0] - parse_event_id(cursor)[0])
    return [
        sessions,
        GaugeMetricFamily(
            "coordinator_escalation_queue_length", "Sessions waiting for a human", value=queue_len
        ),
        GaugeMetricFamily(
            "coordinator_escalation_oldest_wait_seconds",
            "How long the oldest escalation has waited",
            value=(time.time() - waiting) if waiting else 0,
        ),
        GaugeMetricFamily(
            "coordinator_agents_online",
            "Agents seen recently",
            value=sum(not a.stale for a in agents),
        ),
        GaugeMetricFamily(
            "coordinator_events_per_minute", "Events in the last minute", value=per_minute
        ),
        GaugeMetricFamily(
            "coordinator_relay_lag_seconds",
            "Newest feed event minus the last relayed one",
            value=lag_ms / 1000,
        ),
    ]


def _authorized(request: HttpRequest) -> bool:
    token = getattr(settings, "METRICS_TOKEN", "")
    header = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(header, f"Bearer {token}"):
        return True
    user = getattr(request, "user", None)
    return bool(user and user.is_authenticated and user.is_staff)


@login_not_required
@never_cache
@require_GET
async def metrics(request: HttpRequest) -> HttpResponse:
    """Staff (logged in) or a scraper with ``Authorization: Bearer $METRICS_TOKEN``."""
    request.user = await request.auser()
    if not _authorized(request):
        return HttpResponse(
            "metrics need a staff login or the METRICS_TOKEN bearer token",
            status=403,
            content_type="text/plain",
        )
    registry = CollectorRegistry()
    registry.register(_Snapshot(await gather_families()))
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
