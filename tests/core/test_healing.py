"""Clients that heal (issue 17): a process's shared cluster client left without nodes by
redis-py (it drops a node from its startup nodes on each connection error) is rebuilt, so
publishes and subscribers recover by themselves."""

from __future__ import annotations

import asyncio
import time

import pytest

from coordination import AgentCoordinator, EventType
from coordination.core import connection


@pytest.fixture
def redis_url(redis_cluster_url):
    """Cluster only (a single server's pool reconnects by itself); ``namespace`` cleans there."""
    return redis_cluster_url


def _strand(client) -> None:
    """Leave the client as redis-py does after errors on every node it knew (issue 17:
    ``RedisClusterException: ... reachable node: None`` on every later command)."""
    client.nodes_manager.startup_nodes.clear()
    client.nodes_manager.nodes_cache.clear()
    client.nodes_manager.slots_cache.clear()
    client._initialize = True


async def test_a_stranded_shared_cluster_client_is_rebuilt(redis_cluster_url, namespace):
    coord = AgentCoordinator("heal", redis_cluster_url, namespace=namespace)
    await coord.publish(EventType.MESSAGE, {"n": 0})
    stranded = coord.redis
    _strand(stranded)
    started = time.monotonic()
    event = await coord.publish(EventType.MESSAGE, {"n": 1}, idempotency_key="after")
    took = time.monotonic() - started
    assert coord.redis is not stranded
    assert took < 5
    assert [e.id for e in await coord.events()][-1] == event.id
    assert len(await coord.events()) == 2


async def test_a_subscriber_outlives_its_stranded_client(redis_cluster_url, namespace):
    coord = AgentCoordinator("heal-sub", redis_cluster_url, namespace=namespace)
    first = await coord.publish(EventType.MESSAGE, {"n": 0})
    received: list[str] = []

    async def follow() -> None:
        async for event in coord.subscribe():
            received.append(event.id)
            if len(received) == 2:
                return

    task = asyncio.ensure_future(follow())
    _strand(coord.redis)
    second = await coord.publish(EventType.MESSAGE, {"n": 1})
    await asyncio.wait_for(task, timeout=15)
    assert received == [first.id, second.id]
    # the old client, closed in the background, is not the one in use
    assert connection.shared_client(redis_cluster_url) is coord.redis
