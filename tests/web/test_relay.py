"""The relay: one active across workers, fenced cursor, resume after takeover, coalescing."""

from __future__ import annotations

import asyncio

from channels.layers import get_channel_layer

from coordination import AgentCoordinator, EventType, SessionIndex
from coordination.live import SESSIONS_GROUP, Relay, session_group

from ..waiting import eventually


async def receive_until(layer, channel, count, timeout=10):
    """Event items from ``session.events`` messages, until ``count`` arrived."""
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            message = await layer.receive(channel)
            assert message["type"] == "session.events"
            got.extend(message["events"])
    return got


async def test_one_relay_leads_and_another_takes_over_resuming_from_the_cursor(
    redis_url, namespace, coordination_settings
):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(session_group("s-relay"), channel)
    index = SessionIndex(redis_url, namespace=namespace)
    coord = AgentCoordinator("s-relay", redis_url, namespace=namespace)
    first = Relay(index, lease_ttl=1.0, flush_interval=0.05, worker_id="w1")
    second = Relay(index, lease_ttl=1.0, flush_interval=0.05, worker_id="w2")
    t1 = asyncio.create_task(first.run())
    await eventually(lambda: first.is_leader, "the first relay to take the lease")
    t2 = asyncio.create_task(second.run())
    try:
        published = [await coord.publish(EventType.MESSAGE, {"n": n}) for n in range(3)]
        got = await receive_until(layer, channel, 3)
        assert [m["id"] for m in got] == [e.id for e in published]
        assert all(f'data-event-id="{m["id"]}"' in m["html"] for m in got)
        assert not second.is_leader

        await first.stop(t1)  # the leading worker stops; its lease is released on the way out
        more = [await coord.publish(EventType.MESSAGE, {"n": n}) for n in range(3, 6)]
        got = await receive_until(layer, channel, 3)
        assert [m["id"] for m in got] == [e.id for e in more]
        assert second.is_leader
    finally:
        await second.stop(t2)
        await layer.group_discard(session_group("s-relay"), channel)


async def test_lists_get_coalesced_notices(redis_url, namespace, coordination_settings):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(SESSIONS_GROUP, channel)
    index = SessionIndex(redis_url, namespace=namespace)
    relay = Relay(index, lease_ttl=2.0, flush_interval=0.2, worker_id="w")
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: relay.is_leader, "the relay to take the lease")
        for n in range(50):
            await AgentCoordinator(f"s-{n % 5}", redis_url, namespace=namespace).publish(
                EventType.MESSAGE, {}
            )
        seen: set[str] = set()
        notices = 0
        async with asyncio.timeout(10):
            while seen != {f"s-{n}" for n in range(5)}:
                message = await layer.receive(channel)
                seen.update(message["ids"])
                notices += 1
        assert notices < 50  # bursts are merged, not one notice per event
    finally:
        await relay.stop(task)


async def test_the_active_relay_prunes_expired_sessions_from_the_index(
    redis_url, namespace, coordination_settings, redis_sync
):
    coord = AgentCoordinator("expiring", redis_url, namespace=namespace, retention=0.3)
    await coord.publish(EventType.MESSAGE, {})
    index = SessionIndex(redis_url, namespace=namespace, retention=0.3)
    async with asyncio.timeout(10):
        while redis_sync.exists(index.keys.session("expiring").meta):  # Redis's own clock
            await asyncio.sleep(0.05)
    assert (await index.counts_by_status())["active"] == 1  # the index still lists it
    relay = Relay(index, lease_ttl=1.0, flush_interval=0.05, worker_id="w", prune_every=0.1)
    task = asyncio.create_task(relay.run())
    try:
        async with asyncio.timeout(10):
            while sum((await index.counts_by_status()).values()):
                await asyncio.sleep(0.05)
        assert (await index.list_sessions()).sessions == []
    finally:
        await relay.stop(task)
