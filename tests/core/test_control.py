"""Escalation, takeover and hand-back, close, the session index, clear(), errors."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from redis.cluster import key_slot

from coordination import (
    AgentCoordinator,
    EventType,
    InvalidCursor,
    InvalidEscalationQueue,
    InvalidSessionId,
    NotHumanControlled,
    RedisUnavailable,
    SessionClosed,
    SessionTakenOver,
)
from coordination.core import scripts
from coordination.core.connection import is_cluster

from .conftest import left_after_clear


async def test_two_supervisors_race_to_take_over_one_wins_other_learns_who(make):
    a, b = make.coordinator("s-take"), make.coordinator("s-take")
    await a.escalate("angry customer")
    results = await asyncio.gather(
        a.take_over("human:ann"), b.take_over("human:bob"), return_exceptions=True
    )
    winners = [r for r in results if r is True]
    losers = [r for r in results if isinstance(r, SessionTakenOver)]
    assert len(winners) == 1 and len(losers) == 1
    winner = "human:ann" if results[0] is True else "human:bob"
    assert losers[0].controller == winner and losers[0].since is not None
    assert await a.controller() == winner
    assert await a.take_over(winner) is False  # already yours


async def test_escalation_queue_is_oldest_first_and_takeover_removes(make):
    index = make.index()
    for sid in ("s-1", "s-2", "s-3"):
        await make.coordinator(sid).escalate("help")
    assert [s.session_id for s in await index.escalation_queue()] == ["s-1", "s-2", "s-3"]
    await make.coordinator("s-2").take_over("human:ann")
    queue = await index.escalation_queue()
    assert [s.session_id for s in queue] == ["s-1", "s-3"]
    assert queue[0].status == "escalated" and queue[0].escalated_at
    counts = await index.counts_by_status()
    assert counts["escalated"] == 2 and counts["human"] == 1


async def test_an_escalation_names_its_queue_until_a_human_picks_it_up(make):
    index = make.index()
    vip = make.coordinator("s-vip")
    await vip.escalate("refund", {"queue": "vip"})
    await vip.escalate("still waiting", {"queue": "billing"})  # the first escalation's queue stays
    await make.coordinator("s-plain").escalate("help")
    queue = {s.session_id: s for s in await index.escalation_queue()}
    assert queue["s-vip"].escalation_queue == "vip"
    assert queue["s-plain"].escalation_queue is None
    await vip.take_over("human:ann")
    assert (await index.get_session("s-vip")).escalation_queue is None
    for bad in ("", "has space", "x" * 65, 7):
        with pytest.raises(InvalidEscalationQueue, match="escalation queue"):
            await make.coordinator("s-bad").escalate("help", {"queue": bad})
    assert await index.get_session("s-bad") is None  # refused before anything was written


async def test_hand_back_to_queue_and_errors(make):
    coord = make.coordinator("s-back")
    with pytest.raises(NotHumanControlled):
        await coord.hand_back()
    await coord.take_over("human:ann")
    assert await coord.is_human_controlled()
    await coord.hand_back(by="human:ann")
    summary = await make.index().get_session("s-back")
    assert summary.status == "waiting" and summary.controller is None
    types = [e.type for e in await coord.events()]
    assert types[-2:] == [EventType.HUMAN_TAKEOVER, EventType.HUMAN_HANDBACK]


async def test_close_ends_claim_and_queue_and_is_not_repeated(make):
    coord, atomic = make.coordinator("s-close"), make.atomic()
    await atomic.claim_handoff("s-close", "bot")
    await coord.escalate("refund over limit")
    await coord.close(by="human:ann", reason="resolved")
    summary = await make.index().get_session("s-close")
    assert summary.status == "closed" and summary.claim_agent is None
    assert await make.index().escalation_queue() == []
    assert await atomic.claim_handoff("s-close", "bot") is False
    with pytest.raises(SessionClosed):
        await coord.close()
    with pytest.raises(SessionClosed):
        await coord.take_over("human:ann")


async def test_list_sessions_by_activity_with_cursor_and_filters(make):
    index = make.index()
    for n in range(7):
        await make.coordinator(f"s-{n}").publish(EventType.MESSAGE, {"n": n})
    await make.coordinator("s-2").escalate("x")
    seen, cursor = [], None
    while True:
        page = await index.list_sessions(cursor=cursor, limit=3)
        seen += [s.session_id for s in page.sessions]
        cursor = page.next_cursor
        if cursor is None:
            break
    summaries = [await index.get_session(f"s-{n}") for n in range(7)]
    expected = sorted(summaries, key=lambda s: (s.last_activity, s.session_id), reverse=True)
    assert seen == [s.session_id for s in expected]
    escalated = await index.list_sessions(status="escalated")
    assert [s.session_id for s in escalated.sessions] == ["s-2"]
    await make.atomic().claim_handoff("s-4", "billing")
    assert [s.session_id for s in (await index.list_sessions(owner="billing")).sessions] == ["s-4"]
    by_prefix = await index.list_sessions(prefix="s-", limit=4)
    assert [s.session_id for s in by_prefix.sessions] == ["s-0", "s-1", "s-2", "s-3"]
    rest = await index.list_sessions(prefix="s-", cursor=by_prefix.next_cursor, limit=4)
    assert [s.session_id for s in rest.sessions] == [
        "s-4",
        "s-5",
        "s-6",
    ] and rest.next_cursor is None
    with pytest.raises(InvalidCursor):
        await index.list_sessions(cursor="garbage")


async def test_agent_presence_from_agent_ready_and_heartbeat(make):
    coord, index = make.coordinator("s-agents"), make.index(stale_after=60)
    await coord.publish(
        EventType.AGENT_READY, {"agent_id": "billing", "capabilities": ["refunds"], "load": 0.3}
    )
    await make.atomic().claim_handoff("s-agents", "billing")
    await index.heartbeat("billing", load=0.5)
    [agent] = await index.agents()
    assert agent.agent_id == "billing" and agent.capabilities == ["refunds"]
    assert agent.load == 0.5 and agent.sessions_held == 1 and not agent.stale


async def test_clear_removes_one_session_atomically_and_nothing_else(make, ns_keys, redis_sync):
    keep, gone = make.coordinator("s-keep"), make.coordinator("s-gone")
    await keep.publish(EventType.MESSAGE, {})
    await gone.publish(EventType.MESSAGE, {})
    await gone.set_state("k", 1)
    await make.atomic().claim_handoff("s-gone", "bot")
    await gone.escalate("x")
    await gone.clear()
    remaining = ns_keys()
    keys = gone.keys.session("s-gone")
    assert remaining & set(keys.all()) == left_after_clear(gone)
    if is_cluster(gone.redis):
        assert set(redis_sync.hgetall(keys.outbox)) == {"e", "lo", "n"}
        # the outcomes of the session's operations (5 here, the clear's last), kept so that a
        # retry across the clear returns its first outcome; they expire within 2 x the window
        assert redis_sync.hlen(keys.ops) == 5
        assert 0 < redis_sync.pttl(keys.ops) <= 2 * scripts.OP_WINDOW_MS
        assert redis_sync.pttl(keys.outbox) > 0
    assert {keep.keys.session("s-keep").events, keep.keys.session("s-keep").meta} <= remaining
    assert await make.index().get_session("s-gone") is None
    assert [s.session_id for s in (await make.index().list_sessions()).sessions] == ["s-keep"]
    assert await make.index().escalation_queue() == []


@pytest.mark.parametrize("session_id", ["user:conv:{ts}", "{", "}", "a:b", "ünï", "x" * 256])
async def test_session_keys_share_one_cluster_slot_whatever_the_id(make, session_id):
    keys = make.coordinator(session_id).keys.session(session_id).all()
    assert len({key_slot(k.encode()) for k in keys}) == 1
    event = await make.coordinator(session_id).publish(EventType.MESSAGE, {})
    assert event.session_id == session_id
    assert (await make.index().get_session(session_id)).session_id == session_id


@pytest.mark.parametrize("bad", ["", "x" * 257, "a\nb", "tab\t", "nul\x00", 42, None, "\ud800"])
def test_malformed_session_ids_are_refused_clearly(bad):
    with pytest.raises(InvalidSessionId, match="session id"):
        AgentCoordinator(bad)


async def test_redis_down_names_the_url_without_password():
    coord = AgentCoordinator("s", "redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(RedisUnavailable) as info:
        await coord.publish(EventType.MESSAGE, {})
    assert "127.0.0.1:1" in str(info.value) and "hunter2" not in str(info.value)


async def test_guarded_publish_is_refused_atomically_while_a_human_controls(make):
    coord = make.coordinator("s-guarded", source="bot")
    await coord.publish(EventType.MESSAGE, {"n": 1}, guard=True)
    await coord.take_over("human:ann")
    with pytest.raises(SessionTakenOver) as info:
        await coord.publish(EventType.MESSAGE, {"n": 2}, guard=True)
    assert info.value.controller == "human:ann"
    assert [e.type for e in await coord.events()] == [EventType.MESSAGE, EventType.HUMAN_TAKEOVER]
    await coord.publish(EventType.NOTE, {"text": "unguarded writes still work"})


async def test_prune_drops_index_entries_of_expired_sessions(make, redis_sync, namespace):
    coord = make.coordinator("short-lived", retention=0.3)
    await coord.publish(EventType.MESSAGE, {})
    await make.atomic(retention=0.3).claim_handoff("short-lived", "billing")
    index = make.index(retention=0.3)
    assert (await index.counts_by_status())["active"] == 1
    meta = index.keys.session("short-lived").meta
    deadline = time.monotonic() + 10
    while redis_sync.exists(meta):  # Redis expires the session's keys on its own clock
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert await index.prune() == 1
    assert sum((await index.counts_by_status()).values()) == 0
    assert (await index.list_sessions(owner="billing")).sessions == []
    assert (await index.list_sessions()).sessions == []


async def test_prune_forgets_what_a_cleared_session_left_in_the_cluster_index(
    make, redis_sync, namespace
):
    coord = make.coordinator("cleared")
    await coord.publish(EventType.MESSAGE, {})
    await coord.clear()
    applied = make.index().keys.applied
    # The index's own clock decides what has outlived the retention: one still within it keeps
    # the tombstone, one a retention and a minute later forgets it (the real clock's millisecond
    # never decides the outcome).
    within = make.index(retention=60, clock=lambda: time.time() + 30)
    past = make.index(retention=60, clock=lambda: time.time() + 120)
    assert sum((await within.counts_by_status()).values()) == 0
    await within.prune()
    if is_cluster(within.redis):
        # on a Cluster the clear leaves a tombstone that fences late index updates
        assert json.loads(redis_sync.hget(applied, "cleared"))[1] == ""
    await past.prune()
    if is_cluster(past.redis):
        # while the session's outbox lasts (a retention after the clear) entries may still
        # come from it: the tombstone stays until it has expired
        assert redis_sync.hexists(applied, "cleared")
        redis_sync.delete(coord.keys.session("cleared").outbox)  # as its expiry would
        await past.prune()
    assert not redis_sync.hexists(applied, "cleared")
    assert (await past.list_sessions()).sessions == []
