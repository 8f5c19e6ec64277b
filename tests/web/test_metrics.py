"""/metrics: Prometheus text from Redis, for staff or a bearer token only."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync

from coordination import AgentCoordinator, EventType

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
