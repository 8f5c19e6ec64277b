"""Sentinel: a primary, a replica and one Sentinel from the redis-server binary; the core finds
the primary through a redis+sentinel:// URL and follows it through a failover."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest
import redis

from coordination import AgentCoordinator, EventType, RedisUnavailable
from coordination.devtools.embedded_redis import EmbeddedRedis, redis_server_binary
from coordination.devtools.processes import free_port, stop_process


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def sentinel_setup(tmp_path):
    primary = EmbeddedRedis(tmp_path / "primary").start()
    replica = EmbeddedRedis(
        tmp_path / "replica", None, "--replicaof", "127.0.0.1", str(primary.port)
    ).start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor main 127.0.0.1 {primary.port} 1\n"
        "sentinel down-after-milliseconds main 1000\n"
        "sentinel failover-timeout main 10000\n"
    )
    sentinel = subprocess.Popen(
        [redis_server_binary(), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = redis.Redis(port=port, decode_responses=True, socket_timeout=2)
    try:

        def knows_replica():
            try:
                return len(client.sentinel_slaves("main")) == 1
            except redis.RedisError:
                return False

        wait_until(knows_replica, "the sentinel to find the replica")
        yield primary, replica, client, f"redis+sentinel://127.0.0.1:{port}/main"
    finally:
        client.close()
        stop_process(sentinel, timeout=5)
        replica.stop()
        primary.stop()


async def test_core_follows_the_primary_through_a_failover(sentinel_setup):
    primary, replica, sentinel, url = sentinel_setup
    coord = AgentCoordinator("ha", url, namespace="sentinel-test")  # private servers
    first = await coord.publish(EventType.MESSAGE, {"n": 1})
    replica_client = redis.Redis(port=replica.port, decode_responses=True)
    wait_until(
        lambda: (
            replica_client.info("replication").get("master_link_status") == "up"
            and replica_client.xlen(coord.keys.session("ha").events) == 1
        ),
        "the replica to hold the event",
    )

    def failover_accepted():
        try:  # refused (NOGOODSLAVE) until the sentinel has seen the replica's link as up
            return sentinel.execute_command("SENTINEL", "FAILOVER", "main")
        except redis.ResponseError:
            return False

    wait_until(failover_accepted, "the sentinel to accept a failover")
    wait_until(
        lambda: str(sentinel.info("sentinel")["master0"]["address"]).endswith(f":{replica.port}"),
        "the sentinel to promote the replica",
    )
    # The client learns of the failover on its next command (the old primary refuses writes
    # or the connection drops): the caller sees RedisUnavailable once and retries.
    deadline = time.monotonic() + 30
    while True:
        try:
            second = await coord.publish(EventType.MESSAGE, {"n": 2})
            break
        except RedisUnavailable:
            assert time.monotonic() < deadline, "the core never reached the new primary"
            await asyncio.sleep(0.1)
    events = await coord.events()
    assert [e.id for e in events] == [first.id, second.id]
    assert replica_client.info("replication")["role"] == "master"
    replica_client.close()
    await coord.aclose()


async def test_wait_replicas_through_sentinel(sentinel_setup):
    primary, replica, _client, url = sentinel_setup
    coord = AgentCoordinator("sw", url, namespace="sent", wait_replicas=1, wait_timeout=2)
    on_replica = redis.Redis(port=replica.port, decode_responses=True, socket_timeout=5)
    try:
        wait_until(
            lambda: on_replica.info("replication").get("master_link_status") == "up",
            "the replica's first sync",
        )
        event = await coord.publish(EventType.MESSAGE, {"n": 1})
        # WAIT 1 answered on the script's own connection: the replica has the event now
        assert [r[0] for r in on_replica.xrange(coord.keys.session("sw").events)] == [event.id]
        strict = AgentCoordinator("sw", url, namespace="sent", wait_replicas=2, wait_timeout=0.2)
        with pytest.raises(RedisUnavailable, match="1 of 2 replicas"):
            await strict.publish(EventType.MESSAGE, {}, idempotency_key="k")
    finally:
        on_replica.close()
        await coord.redis.aclose()
