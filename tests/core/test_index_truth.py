"""An index that tells the truth (issue 17), with short retentions, on one server and a Cluster."""

from __future__ import annotations

import asyncio

from coordination import EventType

from ..waiting import eventually


async def _gone(redis_sync, key) -> bool:
    return not redis_sync.exists(key)


async def test_expired_sessions_leave_counts_and_pages_at_once(make, redis_sync):
    short = make.coordinator("s-short", retention=1.0)
    await short.publish(EventType.MESSAGE, {})
    index = make.index(retention=1.0)
    assert (await index.counts_by_status())["active"] == 1
    meta = short.keys.session("s-short").meta
    await eventually(lambda: _gone(redis_sync, meta), "the session's keys to expire")
    # no prune() in between: the read path itself leaves the expired session out
    assert (await index.counts_by_status())["active"] == 0
    page = await index.list_sessions()
    assert page.sessions == [] and page.next_cursor is None
    assert (await index.list_sessions(status="active")).sessions == []


async def test_no_empty_page_with_a_next_cursor(make, redis_sync):
    for i in range(3):
        await make.coordinator(f"alive-{i}").publish(EventType.MESSAGE, {})
    for i in range(4):
        gone = make.coordinator(f"gone-{i}")
        await gone.publish(EventType.MESSAGE, {})
        # the newest sessions lose their keys around the core (as expiry does between prunes)
        redis_sync.delete(*gone.keys.session(f"gone-{i}").all())
    index = make.index()
    seen, cursor = [], None
    while True:
        page = await index.list_sessions(cursor=cursor, limit=2)
        assert page.sessions, "an empty page"
        seen += [s.session_id for s in page.sessions]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == ["alive-0", "alive-1", "alive-2"]


async def test_sliding_retention_is_exact_to_a_second(make, redis_sync):
    coord = make.coordinator("s-slide", retention=2.0)
    meta = coord.keys.session("s-slide").meta
    events = coord.keys.session("s-slide").events
    await coord.publish(EventType.MESSAGE, {})
    # active for twice the retention: each publish must leave about the whole retention ahead
    for _ in range(14):
        await asyncio.sleep(0.3)  # time passing on the server's clock, not synchronisation
        await coord.publish(EventType.MESSAGE, {})
        assert redis_sync.pttl(meta) > 2000 - 1000
        assert redis_sync.pttl(events) > 2000 - 1000
    assert redis_sync.xlen(events) == 15


async def test_a_session_that_expired_and_woke_has_one_status(make, redis_sync):
    coord = make.coordinator("s-wake", retention=1.0)
    await coord.publish(EventType.HANDOFF_READY, {})
    index = make.index(retention=1.0)
    assert (await index.counts_by_status())["waiting"] == 1
    await eventually(
        lambda: _gone(redis_sync, coord.keys.session("s-wake").meta), "the session to expire"
    )
    await coord.publish(EventType.MESSAGE, {})
    statuses = [s for s, key in index.keys.status.items() if redis_sync.zscore(key, "s-wake")]
    assert statuses == ["active"]
    counts = await index.counts_by_status()
    assert (counts["active"], counts["waiting"]) == (1, 0)


async def test_a_lapsed_claim_names_no_owner(make, redis_sync):
    await make.coordinator("s-lapse").publish(EventType.HANDOFF_READY, {})
    atomic = make.atomic()
    assert await atomic.claim_handoff("s-lapse", "agent-1", ttl=0.3)
    index = make.index()
    assert (await index.get_session("s-lapse")).owner == "agent-1"
    assert [s.session_id for s in (await index.list_sessions(owner="agent-1")).sessions] == [
        "s-lapse"
    ]
    claim = atomic.keys.session("s-lapse").claim
    await eventually(lambda: _gone(redis_sync, claim), "the claim to lapse")
    summary = await index.get_session("s-lapse")
    assert summary.owner is None and summary.claim_agent is None
    assert (await index.list_sessions(owner="agent-1")).sessions == []
    # a human's control is not a lapsing claim: the controller stays the owner
    await make.coordinator("s-lapse").take_over("sup")
    assert (await index.get_session("s-lapse")).owner == "sup"


async def test_prune_keeps_up_and_is_not_held_up_by_live_sessions(make, redis_sync):
    # sessions kept by a longer retention elsewhere come first in the activity order
    for i in range(3):
        await make.coordinator(f"kept-{i}", retention=600).publish(EventType.MESSAGE, {})
    short = [make.coordinator(f"brief-{i}", retention=1.0) for i in range(12)]
    for coord in short:
        await coord.publish(EventType.MESSAGE, {})
    last_meta = short[-1].keys.session("brief-11").meta
    await eventually(lambda: _gone(redis_sync, last_meta), "the brief sessions to expire")
    index = make.index(retention=1.0)
    # one call, pages of 4: the 3 live ones are skipped, all 12 expired ones cleared
    assert await index.prune(batch=4) == 12
    left = redis_sync.zrange(index.keys.activity, 0, -1)
    assert sorted(left) == ["kept-0", "kept-1", "kept-2"]
