"""/metrics: Prometheus text from Redis, for staff or a bearer token only."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from coordination import AgentCoordinator, AtomicOperations, EventType, SessionIndex
from coordination.core import RedisUnavailable
from coordination.devtools.processes import free_port
from coordination.foundation.telemetry import count_slow_client_cutoff, open_websockets, report
from coordination.realtime.routing import websocket_urlpatterns
from coordinator_site.lifespan import LifespanRelay

pytestmark = pytest.mark.django_db


def value(body: str, name: str) -> float:
    line = next(
        line
        for line in body.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )
    return float(line.rsplit(" ", 1)[1])


def test_metrics_for_a_token_holder(client, settings, redis_url, namespace):
    settings.METRICS_TOKEN = "scrape-token-123"
    coord = AgentCoordinator("m-1", redis_url, namespace=namespace)
    async_to_sync(coord.publish)(EventType.AGENT_READY, {"agent_id": "billing"})
    async_to_sync(AgentCoordinator("m-2", redis_url, namespace=namespace).escalate)("help")
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-123")
    body = response.content.decode()
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    assert value(body, 'coordinator_sessions{status="escalated"}') == 1
    assert value(body, 'coordinator_sessions{status="active"}') == 1
    assert value(body, "coordinator_escalation_queue_length") == 1
    assert value(body, "coordinator_agents_online") == 1
    assert value(body, "coordinator_events_per_minute") >= 1


def test_metrics_refuse_anonymous_and_wrong_tokens(client, settings, supervisor):
    settings.METRICS_TOKEN = "scrape-token-123"
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 403
    client.force_login(supervisor)  # not staff
    assert client.get("/metrics").status_code == 403


def scrape(client, settings) -> str:
    settings.METRICS_TOKEN = "scrape-token-123"
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-123")
    assert response.status_code == 200
    return response.content.decode()


def test_counters_of_events_claims_and_interventions(
    client, settings, supervisor, redis_url, namespace
):
    atomic = AtomicOperations(redis_url, namespace=namespace)
    coord = AgentCoordinator("c-1", redis_url, namespace=namespace)
    async_to_sync(coord.publish)(EventType.MESSAGE, {"n": 1})
    async_to_sync(coord.publish)(EventType.MESSAGE, {"n": 2})
    async_to_sync(coord.publish)(EventType.HANDOFF_READY, {})
    assert async_to_sync(atomic.claim_handoff)("c-1", "billing") is True
    assert async_to_sync(atomic.claim_handoff)("c-1", "sales") is False
    assert async_to_sync(atomic.claim_handoff)("c-1", "tech") is False
    client.force_login(supervisor)
    client.post("/act/release/c-1/", {"expected_owner": "billing"})
    client.post("/act/release/c-1/", {"expected_owner": "billing"})  # refused: no claim now
    body = scrape(client, settings)
    assert value(body, 'coordinator_events_total{type="message"}') == 2
    assert value(body, 'coordinator_events_total{type="handoff_ready"}') == 1
    assert value(body, 'coordinator_events_total{type="handoff_claimed"}') == 1
    assert value(body, 'coordinator_events_total{type="handoff_released"}') == 1
    assert value(body, 'coordinator_events_total{type="escalated"}') == 0
    assert value(body, 'coordinator_claims_total{outcome="won"}') == 1
    assert value(body, 'coordinator_claims_total{outcome="lost"}') == 2
    assert value(body, 'coordinator_interventions_total{action="release",outcome="done"}') == 1
    assert value(body, 'coordinator_interventions_total{action="release",outcome="refused"}') == 1


@pytest.mark.django_db(transaction=True)  # a consumer inside (see test_interventions)
def test_websocket_clients_of_every_live_process(
    client, settings, supervisor, redis_url, namespace, redis_sync
):
    index = SessionIndex(redis_url, namespace=namespace)
    read = sync_to_async(lambda name: value(scrape(client, settings), name))

    async def scenario():
        before = open_websockets.count  # a failed test elsewhere may have left one open
        communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/sessions/")
        communicator.scope["user"] = supervisor
        connected, _ = await communicator.connect()
        assert connected
        await report(index, "this-process")
        await index.report_worker("other-process", {"websockets": 2})
        # a process that stopped reporting a minute ago no longer counts
        stale = {"websockets": 5, "ms": int(time.time() * 1000) - 60_000}
        redis_sync.hset(index.keys.workers, "gone", json.dumps(stale))
        assert await read("coordinator_websocket_clients") == before + 1 + 2
        assert await read("coordinator_dashboard_processes") == 2
        assert not redis_sync.hexists(index.keys.workers, "gone")
        await communicator.disconnect()
        await report(index, "this-process")
        assert await read("coordinator_websocket_clients") == before + 2

    async_to_sync(scenario)()


def test_redis_errors_are_counted_and_reported_when_redis_is_back(
    client, settings, redis_url, namespace
):
    index = SessionIndex(redis_url, namespace=namespace)
    before = value(scrape(client, settings), "coordinator_redis_errors_total")
    down = SessionIndex(f"redis://127.0.0.1:{free_port()}/0", namespace=namespace)
    for _ in range(2):
        with pytest.raises(RedisUnavailable):
            async_to_sync(down.escalation_count)()
    # counted in this process at once, then moved to the shared counter by the next report
    assert value(scrape(client, settings), "coordinator_redis_errors_total") == before + 2
    async_to_sync(report)(index, "this-process")
    assert async_to_sync(index.counters)()["redis_errors"] >= 2
    assert value(scrape(client, settings), "coordinator_redis_errors_total") == before + 2


async def test_a_process_without_the_relay_still_reports_its_websockets(
    coordination_settings, redis_url, namespace
):
    coordination_settings.COORDINATION_RELAY = False
    index = SessionIndex(redis_url, namespace=namespace)
    received, sent = asyncio.Queue(), asyncio.Queue()
    lifespan = asyncio.create_task(
        LifespanRelay(None)({"type": "lifespan"}, received.get, sent.put)
    )
    await received.put({"type": "lifespan.startup"})
    assert (await sent.get())["type"] == "lifespan.startup.complete"
    async with asyncio.timeout(10):
        while not await index.worker_reports():
            await asyncio.sleep(0.05)
    assert await index.call(index.redis.get(f"{namespace}:{{relay}}:lease")) is None
    await received.put({"type": "lifespan.shutdown"})
    assert (await sent.get())["type"] == "lifespan.shutdown.complete"
    await lifespan


def test_escalations_by_queue_and_over_their_sla(client, settings, redis_url, namespace):
    settings.COORDINATION_ESCALATION_SLA = 3600
    settings.COORDINATION_ESCALATION_SLAS = {"vip": 0.001}
    for n, queue in enumerate(("vip", "vip", None)):
        data = {"queue": queue} if queue else None
        async_to_sync(AgentCoordinator(f"q-{n}", redis_url, namespace=namespace).escalate)(
            "help", data
        )
    body = scrape(client, settings)
    assert value(body, 'coordinator_escalations_waiting{queue="vip"}') == 2
    assert value(body, 'coordinator_escalations_waiting{queue="default"}') == 1
    assert value(body, 'coordinator_escalations_over_sla{queue="vip"}') == 2
    assert value(body, 'coordinator_escalations_over_sla{queue="default"}') == 0


def test_slow_client_cutoffs_are_counted_for_every_process(client, settings, redis_url, namespace):
    # The consumer counts each 1013 cut-off (tests/reliability/test_size_bounds.py cuts a real
    # client off); here: the shared counter reaches the scrape, whichever process answers.
    index = SessionIndex(redis_url, namespace=namespace)
    before = value(scrape(client, settings), "coordinator_websocket_cutoffs_total")
    async_to_sync(count_slow_client_cutoff)(index)
    async_to_sync(count_slow_client_cutoff)(index)
    assert value(scrape(client, settings), "coordinator_websocket_cutoffs_total") == before + 2
