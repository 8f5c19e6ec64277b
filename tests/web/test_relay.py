"""The relay: one active across workers, fenced cursor, resume after takeover, coalescing."""

from __future__ import annotations

import asyncio

from channels.layers import get_channel_layer

from coordination import AgentCoordinator, EventType, SessionIndex
from coordination.realtime.relay import SESSIONS_GROUP, Relay, session_group

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
    # A 5 s lease: only a stall that long may move the lease before the test stops the first
    # relay (a 1 s lease moved under a loaded machine's stalls, and both relays sent a batch).
    first = Relay(index, lease_ttl=5.0, flush_interval=0.05, worker_id="w1")
    second = Relay(index, lease_ttl=5.0, flush_interval=0.05, worker_id="w2")
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
    # Lists are told at most once per flush interval which sessions changed. With 5 s, a burst
    # of 50 events in 5 sessions reaches the lists as one notice (two if the burst straddles a
    # flush: stated bound, 50 publishes in under 5 s); one notice per event would be 50 ids.
    relay = Relay(index, lease_ttl=2.0, flush_interval=5.0, worker_id="w")
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: relay.is_leader, "the relay to take the lease")
        for n in range(50):
            await AgentCoordinator(f"s-{n % 5}", redis_url, namespace=namespace).publish(
                EventType.MESSAGE, {}
            )
        told: list[str] = []
        async with asyncio.timeout(20):
            while set(told) != {f"s-{n}" for n in range(5)}:
                told += (await layer.receive(channel))["ids"]
        assert len(told) <= 10, told  # merged: each session at most once per notice
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
    # readers already leave it out (issue 17); its entry stays until prune() reclaims it
    assert (await index.counts_by_status())["active"] == 0
    assert redis_sync.zcard(index.keys.status["active"]) == 1
    relay = Relay(index, lease_ttl=1.0, flush_interval=0.05, worker_id="w", prune_every=0.1)
    task = asyncio.create_task(relay.run())
    try:
        async with asyncio.timeout(10):
            while redis_sync.zcard(index.keys.status["active"]):
                await asyncio.sleep(0.05)
        assert (await index.list_sessions()).sessions == []
    finally:
        await relay.stop(task)


async def test_feed_entries_written_around_the_core_are_relayed_safely_or_skipped(
    redis_url, namespace, coordination_settings
):
    """On one server and on a Cluster: entries XADDed by hand (bytes that are not UTF-8, a lone
    surrogate in the JSON, a payload that is not an object, no session) neither stop the relay
    nor reach the layer as something it cannot send; later events are relayed."""
    from coordination.core.connection import new_client

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(session_group("s-poison"), channel)
    index = SessionIndex(redis_url, namespace=namespace)
    relay = Relay(index, lease_ttl=1.0, flush_interval=0.05, worker_id="w")
    task = asyncio.create_task(relay.run())
    raw = new_client(redis_url)
    try:
        await asyncio.wait_for(relay.reading.wait(), 15)  # leading, from a cursor
        for fields in (
            {"s": "s-poison", "e": "1-1", "t": "message", "d": '{"x": "\\ud800"}'},
            {"s": "s-poison", "e": "1-2", "t": b"\xff\xfe", "d": "[1, 2]"},
            {"s": b"s-\xed\xa0\x80", "e": "1-3", "t": "message", "d": "{}"},
            {"e": "1-4"},
        ):
            await raw.xadd(index.keys.feed, fields)
        event = await AgentCoordinator("s-poison", redis_url, namespace=namespace).publish(
            EventType.MESSAGE, {"after": "poison"}
        )
        got = await receive_until(layer, channel, 3)
        assert [m["id"] for m in got] == ["1-1", "1-2", event.id]
        assert "\ufffd" in got[0]["html"] and "\ufffd" in got[1]["html"]
        assert relay.restarts == 0 and relay.skipped == 2 and not task.done()
    finally:
        await relay.stop(task)
        await raw.aclose()
        await layer.group_discard(session_group("s-poison"), channel)


async def test_a_cursor_overwritten_with_garbage_restarts_from_the_newest_entry(
    redis_url, namespace, coordination_settings, redis_sync
):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(session_group("s-cursor"), channel)
    index = SessionIndex(redis_url, namespace=namespace)
    coord = AgentCoordinator("s-cursor", redis_url, namespace=namespace)
    await coord.publish(EventType.MESSAGE, {"n": "before"})
    redis_sync.set(f"{namespace}:{{relay}}:cursor", "not-a-stream-id")
    relay = Relay(index, lease_ttl=1.0, flush_interval=0.05, worker_id="w")
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.wait_for(relay.reading.wait(), 15)  # leading, from a cursor
        await eventually(
            lambda: redis_sync.get(f"{namespace}:{{relay}}:cursor") != "not-a-stream-id",
            "the relay to replace the cursor",
        )
        event = await coord.publish(EventType.MESSAGE, {"n": "after"})
        got = await receive_until(layer, channel, 1)
        assert [m["id"] for m in got] == [event.id]  # not the one before, not a crash
        assert relay.restarts == 0
    finally:
        await relay.stop(task)
        await layer.group_discard(session_group("s-cursor"), channel)


async def test_a_standby_takes_over_when_the_dead_holders_lease_runs_out(
    redis_url, namespace, redis_sync, coordination_settings
):
    # A holder that stopped renewing (killed) has 1 s of lease left. With a 30 s lease the
    # standby used to look again only every 10 s (a third of a lease); it now wakes when the
    # holder's lease runs out. Stated bound: 5 s (the old wait would be 10 s).
    index = SessionIndex(redis_url, namespace=namespace)
    redis_sync.set(index.keys.relay_lease, "dead-worker", px=1000)
    relay = Relay(index, lease_ttl=30.0, worker_id="standby")
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: relay.state == "standby", "the relay to stand by")
        assert not relay.is_leader
        await eventually(lambda: relay.is_leader, "the standby to take the lease", timeout=5)
        assert redis_sync.get(index.keys.relay_lease) == "standby"
    finally:
        await relay.stop(task)
