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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from coordination.core import EventType
from coordination.core.connection import redis_failures
from coordination.core.events import is_stream_id
from coordination.core.index import MAX_PAGE
from coordination.foundation.core_clients import session_index
from coordination.realtime.relay import parse_event_id
from coordination.supervision.pickup import waiting_for_pickup
from coordination.supervision.sla import is_over_sla


class _Snapshot:
    """A collector over values gathered beforehand (prometheus_client collects synchronously)."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        yield from self.families


async def gather_families() -> list:
    index = session_index()
    (
        counts,
        queue_len,
        longest_waiting,
        agents,
        per_minute,
        newest,
        cursor,
        counters,
        workers,
    ) = await asyncio.gather(
        index.counts_by_status(),
        index.escalation_count(),
        index.escalation_queue(limit=MAX_PAGE),
        index.agents(limit=1000),
        index.events_per_minute(),
        index.latest_feed_id(),
        index.call(index.redis.get(index.keys.relay_cursor)),
        index.counters(),
        index.worker_reports(),
    )
    sessions = GaugeMetricFamily(
        "coordinator_sessions", "Sessions in the index by status", labels=["status"]
    )
    for status, count in counts.items():
        sessions.add_metric([status], count)
    waiting = longest_waiting[0].escalated_at if longest_waiting else None
    lag_ms = 0.0
    if is_stream_id(cursor) and newest != "0-0":  # anyone with REDIS_URL can SET the cursor
        lag_ms = max(0, parse_event_id(newest)[0] - parse_event_id(cursor)[0])
    return [
        sessions,
        *counter_families(counters),
        *sla_families(longest_waiting),
        *await approval_families(index),
        *await pickup_families(index),
        GaugeMetricFamily(
            "coordinator_websocket_clients",
            "Open dashboard websockets, all server processes",
            value=sum(w.get("websockets", 0) for w in workers.values()),
        ),
        GaugeMetricFamily(
            "coordinator_dashboard_processes",
            "Dashboard server processes that reported in the last 15 s",
            value=len(workers),
        ),
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


def sla_families(longest_waiting: list) -> list:
    """Escalations by queue, and how many are over their queue's SLA. Counted over one page
    of the queue, the longest waiting, to keep a scrape cheap: beyond that many escalations
    the newer ones are not counted (``coordinator_escalation_queue_length`` has the total)."""
    waiting = GaugeMetricFamily(
        "coordinator_escalations_waiting",
        f"Escalated sessions by queue, among the {MAX_PAGE} longest waiting",
        labels=["queue"],
    )
    over = GaugeMetricFamily(
        "coordinator_escalations_over_sla",
        f"Escalations past their queue's SLA, among the {MAX_PAGE} longest waiting",
        labels=["queue"],
    )
    counts: dict[str, list[int]] = {}
    now = time.time()
    for summary in longest_waiting:
        tally = counts.setdefault(summary.escalation_queue or "default", [0, 0])
        tally[0] += 1
        tally[1] += is_over_sla(summary, now)
    for queue, (total, late) in sorted(counts.items()):
        waiting.add_metric([queue], total)
        over.add_metric([queue], late)
    return [waiting, over]


async def pickup_families(index) -> list:
    """Sessions waiting for an agent to pick them up, and the oldest one's wait."""
    oldest, total = await waiting_for_pickup(index, limit=1)
    return [
        GaugeMetricFamily(
            "coordinator_sessions_waiting_pickup",
            "Sessions waiting for an agent (a released claim, a hand-back to the queue)",
            value=total,
        ),
        GaugeMetricFamily(
            "coordinator_pickup_oldest_wait_seconds",
            "How long the session waiting longest for an agent has waited",
            value=max(0.0, time.time() - oldest[0].since) if oldest else 0,
        ),
    ]


async def approval_families(index) -> list:
    """Agents' approval requests waiting for a person, and the oldest one's wait."""
    oldest = await index.pending_approvals(limit=1)  # drops stale queue entries it meets
    count = await index.approval_count()
    requested = oldest.approvals[0].requested_at if oldest.approvals else None
    return [
        GaugeMetricFamily(
            "coordinator_approvals_waiting",
            "Approval requests waiting for a decision",
            value=count,
        ),
        GaugeMetricFamily(
            "coordinator_approvals_oldest_wait_seconds",
            "How long the oldest pending approval request has waited",
            value=max(0.0, time.time() - requested) if requested else 0,
        ),
    ]


def counter_families(counters: dict[str, int]) -> list:
    """The shared counters (see ``telemetry``) as Prometheus counters."""
    events = CounterMetricFamily("coordinator_events", "Events published, by type", labels=["type"])
    claims = CounterMetricFamily(
        "coordinator_claims", "Handoff claims, won or lost", labels=["outcome"]
    )
    interventions = CounterMetricFamily(
        "coordinator_interventions", "Supervisor interventions", labels=["action", "outcome"]
    )
    for event_type in EventType:
        events.add_metric([event_type.value], counters.get(f"events:{event_type.value}", 0))
    for outcome in ("won", "lost"):
        claims.add_metric([outcome], counters.get(f"claims:{outcome}", 0))
    for field, value in sorted(counters.items()):
        kind, _, rest = field.partition(":")
        if kind == "interventions":
            interventions.add_metric(rest.split(":", 1), value)
    # this process's failures not yet added to the shared counter are included
    errors = CounterMetricFamily(
        "coordinator_redis_errors",
        "Times a dashboard process found Redis unavailable",
        value=counters.get("redis_errors", 0) + redis_failures.unreported,
    )
    cutoffs = CounterMetricFamily(
        "coordinator_websocket_cutoffs",
        "Websockets closed (1013) because their client stopped reading and the outbox filled",
        value=counters.get("websocket_cutoffs", 0),
    )
    return [events, claims, interventions, errors, cutoffs]


def _authorized(request: HttpRequest) -> bool:
    token = getattr(settings, "METRICS_TOKEN", "")
    header = request.headers.get("Authorization", "")
    # bytes: compare_digest refuses str with non-ASCII characters (a 500 for a garbled header)
    expected = f"Bearer {token}".encode()
    if token and hmac.compare_digest(header.encode("utf-8", "surrogateescape"), expected):
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
