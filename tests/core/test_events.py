"""Publishing and subscribing: backlog for late listeners, resume by id, live delivery."""

from __future__ import annotations

import asyncio

import pytest

from coordination import EventType, ReservedEventType, UnknownEventType

from ..waiting import eventually


async def test_publish_returns_event_with_stream_id_and_fields(make):
    coord = make.coordinator("s-pub", source="triage")
    event = await coord.publish(EventType.MESSAGE, {"text": "hi"})
    assert event.type is EventType.MESSAGE
    assert event.data == {"text": "hi"}
    assert event.session_id == "s-pub"
    assert event.source == "triage"
    assert event.id.split("-")[0].isdigit()
    assert abs(event.timestamp - event.timestamp_ms / 1000) < 1e-9
    [stored] = await coord.events()
    assert stored == event


async def test_plain_string_type_matching_a_value_is_accepted(make):
    event = await make.coordinator().publish("handoff_ready", {"to_agent": "x"})
    assert event.type is EventType.HANDOFF_READY


async def test_unknown_event_type_lists_the_valid_ones(make, ns_keys):
    with pytest.raises(UnknownEventType) as info:
        await make.coordinator().publish("handoff-ready", {})
    assert "handoff_ready" in str(info.value) and "agent_ready" in str(info.value)
    assert ns_keys() == set()


async def test_reserved_types_must_go_through_their_operation(make):
    with pytest.raises(ReservedEventType, match="claim_handoff"):
        await make.coordinator().publish(EventType.HANDOFF_CLAIMED, {})


async def test_late_subscriber_receives_the_backlog_in_order(make):
    coord = make.coordinator("s-late")
    published = [await coord.publish(EventType.MESSAGE, {"n": n}) for n in range(5)]
    listener = make.coordinator("s-late")
    received = [e async for e in listener.subscribe(timeout=0.2)]
    assert [e.id for e in received] == [e.id for e in published]
    assert [e.data["n"] for e in received] == list(range(5))


async def test_since_resumes_with_no_gap_and_no_duplicate(make):
    coord = make.coordinator("s-resume")
    first = [await coord.publish(EventType.MESSAGE, {"n": n}) for n in range(3)]
    seen = []
    async for event in coord.subscribe(timeout=0.2):
        seen.append(event)
        if len(seen) == 2:
            break
    later = [await coord.publish(EventType.MESSAGE, {"n": n}) for n in range(3, 6)]
    resumed = [e async for e in coord.subscribe(timeout=0.2, since=seen[-1].id)]
    assert [e.id for e in seen + resumed] == [e.id for e in first + later]


async def test_since_dollar_yields_only_new_events(make):
    coord = make.coordinator("s-live")
    await coord.publish(EventType.MESSAGE, {"old": True})
    got = []

    async def listen():
        async for event in coord.subscribe(timeout=5, since="$"):
            got.append(event)
            return

    task = asyncio.create_task(listen())
    # The listener resolves "$" before blocking; publish until it has seen one event.
    while not task.done():
        await coord.publish(EventType.MESSAGE, {"old": False})
        await asyncio.wait({task}, timeout=0.05)
    assert got and got[0].data == {"old": False}


async def test_live_event_reaches_a_blocked_subscriber(make):
    coord = make.coordinator("s-block")
    await coord.publish(EventType.AGENT_STARTED, {"agent_id": "a"})
    received = []

    async def listen():
        async for event in coord.subscribe(timeout=5):
            received.append(event)
            if len(received) == 2:
                return

    task = asyncio.create_task(listen())
    # the backlog event proves the listener is reading
    await eventually(lambda: received or task.done(), "the listener to read the backlog")
    await coord.publish(EventType.AGENT_COMPLETED, {"agent_id": "a"})
    await asyncio.wait_for(task, 5)
    assert [e.type for e in received] == [EventType.AGENT_STARTED, EventType.AGENT_COMPLETED]


async def test_timeout_ends_the_loop_normally_so_for_else_runs(make):
    coord = make.coordinator("s-quiet")
    ran_else = False
    async for _ in coord.subscribe(timeout=0.1):
        pass
    else:
        ran_else = True
    assert ran_else


async def test_types_filter(make):
    coord = make.coordinator("s-filter")
    await coord.publish(EventType.MESSAGE, {})
    await coord.publish(EventType.HANDOFF_READY, {"to_agent": "b"})
    got = [e async for e in coord.subscribe(timeout=0.1, types=["handoff_ready"])]
    assert [e.type for e in got] == [EventType.HANDOFF_READY]


async def test_events_are_paged_newest_first(make):
    coord = make.coordinator("s-page")
    ids = [(await coord.publish(EventType.MESSAGE, {"n": n})).id for n in range(7)]
    page1 = await coord.events(newest_first=True, limit=3)
    page2 = await coord.events(newest_first=True, limit=3, before=page1[-1].id)
    assert [e.id for e in page1 + page2] == list(reversed(ids))[:6]


async def test_streams_are_capped_and_sessions_expire(make, redis_sync):
    coord = make.coordinator("s-cap", stream_maxlen=10, retention=3600)
    for n in range(400):
        await coord.publish(EventType.MESSAGE, {"n": n})
    key = coord.keys.session("s-cap").events
    assert redis_sync.xlen(key) <= 10 + 100  # '~' trims whole stream nodes of 100 entries
    assert 0 < redis_sync.pttl(key) <= 3600 * 1000
    assert 0 < redis_sync.pttl(coord.keys.session("s-cap").meta) <= 3600 * 1000


async def test_state_created_between_expiry_refreshes_expires_with_its_session(make, redis_sync):
    coord = make.coordinator("s-state-ttl", retention=3600)
    keys = coord.keys.session("s-state-ttl")
    await coord.publish(EventType.MESSAGE, {})  # refreshes the session's expiry now
    # the next writes come within the second: no refresh, so the script itself must give a
    # hash it creates the session's expiry
    await coord.set_state("a", 1)
    assert 0 < redis_sync.pttl(keys.state) <= 3600 * 1000
    assert 0 < redis_sync.pttl(keys.versions) <= 3600 * 1000
    await coord.delete_state("a")  # the last field: the hash is gone
    assert redis_sync.exists(keys.state) == 0
    await coord.set_state("a", 2)  # created again, its version kept
    assert 0 < redis_sync.pttl(keys.state) <= 3600 * 1000
    assert await coord.set_state("a", 3) == 4


async def test_feed_carries_every_session_in_order_and_resumes(make):
    a, b = make.coordinator("s-a"), make.coordinator("s-b")
    index = make.index()
    e1 = await a.publish(EventType.MESSAGE, {"n": 1})
    e2 = await b.publish(EventType.MESSAGE, {"n": 2})
    entries = await index.read_feed("0")
    assert [(f.event.session_id, f.event.id) for f in entries] == [("s-a", e1.id), ("s-b", e2.id)]
    e3 = await a.publish(EventType.MESSAGE, {"n": 3})
    more = await index.read_feed(entries[-1].feed_id)
    assert [f.event.id for f in more] == [e3.id]
    assert more[0].event.data == {"n": 3}
