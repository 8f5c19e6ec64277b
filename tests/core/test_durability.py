"""Durability you can choose (issue 17): ``wait_replicas`` makes a write wait for replicas."""

from __future__ import annotations

import time

import pytest

from coordination import AgentCoordinator, EventType, RedisUnavailable
from coordination.core import connection
from coordination.devtools.embedded_redis import EmbeddedRedis

from ..waiting import eventually


async def test_a_write_without_the_replicas_asked_for_is_not_acknowledged(tmp_path):
    server = EmbeddedRedis(tmp_path / "alone").start()
    coord = AgentCoordinator("d", server.url, namespace="dur", wait_replicas=1, wait_timeout=0.2)
    direct = connection.new_client(server.url)
    try:
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match="0 of 1 replicas"):
            await coord.publish(EventType.MESSAGE, {}, idempotency_key="k")
        assert time.monotonic() - started < 5
        # on the primary, not acknowledged: a retry with the key waits again, stores nothing
        assert await direct.xlen(coord.keys.session("d").events) == 1
        with pytest.raises(RedisUnavailable):
            await coord.publish(EventType.MESSAGE, {}, idempotency_key="k")
        assert await direct.xlen(coord.keys.session("d").events) == 1
    finally:
        await coord.aclose()
        await direct.aclose()
        server.stop()


async def test_a_write_is_acknowledged_once_a_replica_has_it(tmp_path):
    primary = EmbeddedRedis(tmp_path / "primary").start()
    replica = EmbeddedRedis(
        tmp_path / "replica", None, "--replicaof", "127.0.0.1", str(primary.port)
    ).start()
    coord = AgentCoordinator("d", primary.url, namespace="dur", wait_replicas=1, wait_timeout=2)
    on_replica = connection.new_client(replica.url)
    try:
        await eventually(
            lambda: _linked(on_replica), "the replica to finish its first sync", timeout=20
        )
        event = await coord.publish(EventType.MESSAGE, {"n": 1})
        # WAIT answered 1: the replica holds the event the moment publish returns
        rows = await on_replica.xrange(coord.keys.session("d").events)
        assert [r[0] for r in rows] == [event.id]
        assert (await coord.set_state("k", 1)) == 1
        assert await on_replica.hget(coord.keys.session("d").state, "k") == "1"
    finally:
        await coord.aclose()
        await on_replica.aclose()
        replica.stop()
        primary.stop()


async def _linked(client) -> bool:
    info = await client.info("replication")
    return info.get("master_link_status") == "up"


def test_wait_options_are_checked():
    with pytest.raises(ValueError):
        AgentCoordinator("d", "redis://x:1/0", wait_replicas=-1)
    with pytest.raises(ValueError):
        AgentCoordinator("d", "redis://x:1/0", wait_replicas=1, wait_timeout=0)
