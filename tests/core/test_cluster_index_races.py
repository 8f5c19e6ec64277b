"""The Cluster index's second step against clears, retries and clocks, and prune against a
session written again (on one server too): a hostile review's reproductions, each of which
failed before its fix."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from coordination import (
    AgentCoordinator,
    CoordinationError,
    EventType,
    RedisUnavailable,
    SessionIndex,
)
from coordination.core import base, scripts
from coordination.core.scripts import apply_index_script
from tests.waiting import eventually

from .conftest import cluster_only

BENIGN = json.dumps([["COUNT", "review"]])


async def _gone(admin, key) -> bool:
    return not await admin.exists(key)


def lose_next_index_answer(monkeypatch, meanwhile) -> dict:
    """Once ``armed["on"]`` is set, the next index step runs, then ``meanwhile()`` (what other
    writers do before the retry), then its answer is lost; ``armed["on"]`` is cleared."""
    real = base.run_cluster_script
    armed = {"on": False}

    async def flaky(client, script, *rest):
        result = await real(client, script, *rest)
        if armed["on"] and script is apply_index_script:
            armed["on"] = False
            await meanwhile()
            raise RedisConnectionError("answer lost")
        return result

    monkeypatch.setattr(base, "run_cluster_script", flaky)
    return armed


def index_slot_away(monkeypatch) -> dict:
    """Every index step fails (and is not retried) while ``away["on"]``, set at first."""
    real = base.run_cluster_script
    away = {"on": True}

    async def unreachable(client, script, *rest):
        if away["on"] and script is apply_index_script:
            raise RedisConnectionError("the index slot is away")
        return await real(client, script, *rest)

    monkeypatch.setattr(base, "run_cluster_script", unreachable)
    monkeypatch.setattr(base, "CLUSTER_RETRY_SECONDS", 0.0)
    return away


@cluster_only
async def test_a_session_recreated_in_the_clears_millisecond_with_a_lower_first_id_is_indexed(
    redis_url, namespace, admin
):
    # Two or more events in the last millisecond before a clear: the tombstone carries
    # "<T>-<s>" with s > 0. The re-created session's stream starts afresh: in the same
    # millisecond its first id is "<T>-0", below the tombstone's, so the tie rule (equal ids
    # only) does not cover it and SYNC skips the record: the session is missing from the index.
    coord = AgentCoordinator("s-tie", redis_url, namespace=namespace)
    index = SessionIndex(redis_url, namespace=namespace)
    hits = []
    for round_ in range(100):
        await asyncio.gather(*(coord.publish(EventType.MESSAGE, {"i": i}) for i in range(6)))
        await coord.clear()
        await coord.publish(EventType.HANDOFF_READY, {})
        counts = await index.counts_by_status()
        if counts["waiting"] != 1:
            record = json.loads(await admin.hget(coord.keys.applied, "s-tie"))
            last_id = await admin.hget(coord.keys.session("s-tie").meta, "last_id")
            hits.append((round_, record, last_id))
        await coord.clear()
    assert not hits, f"{len(hits)}/100 rounds left the re-created session unindexed: {hits[:3]}"


@cluster_only
async def test_a_recreated_session_is_indexed_when_the_stream_was_ahead_of_the_clock(
    redis_url, namespace, admin
):
    # A failover promotes a replica whose clock is behind the old primary's: the session's
    # last event id (written by the old primary) is ahead of the new primary's TIME. Simulated
    # here by the meta's last_id 3 s ahead, as the old primary would have left it. After a clear,
    # the tombstone carries that id; the re-created session's ids come from the new clock, so
    # every SYNC is "not newer" for 3 s and the session stays out of the index, however many
    # writes it gets meanwhile.
    coord = AgentCoordinator("s-skew", redis_url, namespace=namespace)
    index = SessionIndex(redis_url, namespace=namespace)
    await coord.publish(EventType.MESSAGE, {})
    seconds, micros = await admin.time()
    ahead = f"{seconds * 1000 + micros // 1000 + 3000}-0"
    await admin.hset(coord.keys.session("s-skew").meta, "last_id", ahead)
    await coord.clear()
    for _ in range(5):
        await coord.publish(EventType.HANDOFF_READY, {})
    assert await admin.hget(coord.keys.session("s-skew").meta, "status") == "waiting"
    counts = await index.counts_by_status()
    assert counts["waiting"] == 1, (counts, await admin.hget(coord.keys.applied, "s-skew"))


@cluster_only
async def test_a_write_after_a_clear_numbers_on_in_the_same_outbox(redis_url, namespace, admin):
    # The clear's outbox keeps its numbering once applied (its entries, which hold event data,
    # go). Deleted, the next write opened a new epoch from the server's clock: after a failover
    # to a server whose clock is behind, every entry sorted below what the index had applied
    # and was skipped, for as long as that outbox lived.
    coord = AgentCoordinator("s-num", redis_url, namespace=namespace)
    index = SessionIndex(redis_url, namespace=namespace)
    outbox = coord.keys.session("s-num").outbox
    await coord.publish(EventType.HANDOFF_READY, {"secret": "x"})
    epoch = await admin.hget(outbox, "e")
    await coord.clear()
    assert await admin.hgetall(outbox) == {"e": epoch, "lo": "3", "n": "2"}
    assert await admin.pttl(outbox) > 0
    await coord.publish(EventType.HANDOFF_READY, {})
    assert await admin.hmget(outbox, ["e", "n"]) == [epoch, "3"]
    assert (await index.counts_by_status())["waiting"] == 1


@cluster_only
async def test_a_clear_retried_after_a_lost_index_answer_does_not_clear_a_newer_session(
    redis_url, namespace, admin, monkeypatch
):
    # clear() ran without an operation id. When its second step's answer was lost (the index
    # slot's primary fails over, a connection drops), _run sent the whole operation again: the
    # CLEAR script ran a second time, and an agent that wrote to the session in between
    # (re-creating it) lost everything: events, state, claim.
    clearer = AgentCoordinator("s-retry", redis_url, namespace=namespace)
    agent = AgentCoordinator("s-retry", redis_url, namespace=namespace)

    async def meanwhile():
        # between the lost answer and the retry, the agent writes to the session
        await agent.publish(EventType.HANDOFF_READY, {"after": "clear"})

    armed = lose_next_index_answer(monkeypatch, meanwhile)
    await agent.publish(EventType.MESSAGE, {"before": "clear"})
    armed["on"] = True
    await clearer.clear()
    assert not armed["on"]
    events = await admin.xrange(clearer.keys.session("s-retry").events)
    assert [json.loads(f["d"]) for _, f in events] == [{"after": "clear"}]


async def test_prune_does_not_clear_a_session_recreated_after_its_check(
    redis_url, namespace, admin, monkeypatch
):
    # prune() reads EXISTS meta for the expired sessions, then ran an unconditional CLEAR for
    # those without. A session re-created in between (an agent writes to an id that has just
    # expired) was cleared: its new events, state and claim deleted.
    short = AgentCoordinator("s-prune", redis_url, namespace=namespace, retention=1.0)
    agent = AgentCoordinator("s-prune", redis_url, namespace=namespace)
    index = SessionIndex(redis_url, namespace=namespace, retention=1.0)
    meta = short.keys.session("s-prune").meta
    await short.publish(EventType.MESSAGE, {"old": True})
    await eventually(lambda: _gone(admin, meta), "the session's expiry")
    await eventually(
        lambda: index.redis.zrange(index.keys.activity, "-inf", index._alive_from(), byscore=True),
        "the session's activity to pass the retention",
    )
    real_run = index._run

    async def run(script, sid, *args, **kw):
        await agent.publish(EventType.HANDOFF_READY, {"new": True})  # the agent's write
        return await real_run(script, sid, *args, **kw)

    monkeypatch.setattr(index, "_run", run)
    assert await index.prune() == 0  # left alone: written again
    events = await admin.xrange(agent.keys.session("s-prune").events)
    assert [json.loads(f["d"]) for _, f in events] == [{"new": True}]


@cluster_only
async def test_an_approval_requested_while_the_index_is_away_is_queued_after_a_trim(
    redis_url, namespace, admin, monkeypatch
):
    # The index slot is away; the session's writes go on and wait in its outbox, which keeps
    # the newest 1,000. An approval's queue entry is one ZADD, never repeated: trimmed away,
    # the approval stayed pending in its session but never showed in the queue.
    coord = AgentCoordinator("s-trim", redis_url, namespace=namespace)
    index = SessionIndex(redis_url, namespace=namespace)
    away = index_slot_away(monkeypatch)
    with pytest.raises(RedisUnavailable):
        await coord.request_approval("refund", {"amount": 5}, approval_id="a-1")
    for i in range(1000):
        with pytest.raises(RedisUnavailable):
            await coord.publish(EventType.MESSAGE, {"i": i})
    away["on"] = False
    await coord.publish(EventType.MESSAGE, {"back": True})
    page = await index.pending_approvals()
    assert [(a.session_id, a.approval_id) for a in page.approvals] == [("s-trim", "a-1")]
    # and a decision still takes it out of the queue
    await coord.decide("a-1", True, by="sup")
    assert (await index.pending_approvals()).approvals == []


@cluster_only
async def test_entries_of_a_cleared_session_are_not_applied_twice_after_its_record_is_pruned(
    redis_url, namespace, admin, monkeypatch
):
    # A clear by a process that has not seen the session's entries acknowledged, whose own
    # acknowledgement then fails: the outbox keeps the applied entries until it expires, a
    # retention after the clear. prune() dropped the clear's record once the session's last
    # event was past the retention, which can be sooner; the next write (another process)
    # then had the old entries applied again: the event twice in the feed, counted twice.

    agent = AgentCoordinator("s-twice", redis_url, namespace=namespace)

    async def ack_lost(*args, **kwargs):
        raise RedisConnectionError("answer lost")

    await agent.publish(EventType.MESSAGE, {"once": True})
    base._acked.clear()  # the clear comes from a process that has acknowledged nothing
    monkeypatch.setattr(base, "outbox_ack_script", ack_lost)
    await AgentCoordinator("s-twice", redis_url, namespace=namespace).clear()
    monkeypatch.undo()
    later = time.time() + agent.retention_ms / 1000 + 60
    index = SessionIndex(redis_url, namespace=namespace, clock=lambda: later)
    await index.prune()
    counted = (await index.counters())["events:message"]
    feed = await admin.xlen(agent.keys.feed)
    base._acked.clear()  # and the next write from another process
    await agent.publish(EventType.HANDOFF_READY, {})
    assert await admin.xlen(agent.keys.feed) == feed + 1
    assert (await index.counters())["events:message"] == counted


async def _fill_outbox_to_trim(admin, outbox):
    """Entries 2..1000 (benign), so the next write (1001, nothing acknowledged) trims."""
    await admin.hset(outbox, mapping={**{str(i): BENIGN for i in range(2, 1001)}, "n": "1000"})


@cluster_only
async def test_a_pending_approval_record_with_an_infinite_time_wedges_the_sessions_writes(
    redis_url, namespace, admin
):
    # The requeue decoded each approvals record under pcall, but encoded the requeued ZADDs
    # without it: a record whose requested_ms decodes to inf (1e999) or NaN made cjson.encode
    # raise after the body and the outbox writes were done (no rollback). Every later write of
    # the session was stored and reported as refused, for as long as the outbox trimmed.
    coord = AgentCoordinator("s-inf", redis_url, namespace=namespace)
    keys = coord.keys.session("s-inf")
    await coord.publish(EventType.MESSAGE, {"first": True})
    base._acked.pop(keys.outbox, None)  # the next write comes from another process
    await _fill_outbox_to_trim(admin, keys.outbox)
    await admin.hset(keys.approvals, "bad", '{"id":"bad","status":"pending","requested_ms":1e999}')
    stored = await admin.xlen(keys.events)
    errors = []
    for i in range(3):
        try:
            await coord.publish(EventType.MESSAGE, {"later": i})
        except CoordinationError as exc:
            errors.append(str(exc)[-60:])
    assert not errors, (errors, await admin.xlen(keys.events) - stored, "events stored")


@cluster_only
async def test_a_pending_approval_is_not_requeued_when_the_oldest_kept_entry_is_missing(
    redis_url, namespace, admin, monkeypatch
):
    # When the entry the trim keeps first was absent (removed around the core), the requeue
    # was dropped silently and the approval (its one ZADD trimmed) never showed in the queue.
    coord = AgentCoordinator("s-miss", redis_url, namespace=namespace)
    index = SessionIndex(redis_url, namespace=namespace)
    outbox = coord.keys.session("s-miss").outbox
    away = index_slot_away(monkeypatch)
    with pytest.raises(RedisUnavailable):
        await coord.request_approval("refund", {"amount": 5}, approval_id="a-1")
    await _fill_outbox_to_trim(admin, outbox)
    await admin.hdel(outbox, "2")  # the entry the trim keeps first
    away["on"] = False
    await coord.publish(EventType.MESSAGE, {"back": True})
    page = await index.pending_approvals()
    assert [(a.session_id, a.approval_id) for a in page.approvals] == [("s-miss", "a-1")]


@cluster_only
async def test_a_clear_retried_after_another_clear_does_not_clear_the_newer_session(
    redis_url, namespace, admin, monkeypatch
):
    # clear() carries an op id so that its retry returns the first outcome. But every clear
    # deleted the ops hashes: a second clear (another process) between the first one's lost
    # answer and its retry wiped the first one's id, and the retry cleared again, deleting
    # what the agent wrote after the second clear.
    clearer = AgentCoordinator("s-cc", redis_url, namespace=namespace)
    other = AgentCoordinator("s-cc", redis_url, namespace=namespace)
    agent = AgentCoordinator("s-cc", redis_url, namespace=namespace)

    async def meanwhile():
        await agent.publish(EventType.MESSAGE, {"w": 1})
        await other.clear()
        await agent.publish(EventType.HANDOFF_READY, {"w": 2})

    armed = lose_next_index_answer(monkeypatch, meanwhile)
    await agent.publish(EventType.MESSAGE, {"before": "clear"})
    armed["on"] = True
    await clearer.clear()
    assert not armed["on"]
    events = await admin.xrange(clearer.keys.session("s-cc").events)
    assert [json.loads(f["d"]) for _, f in events] == [{"w": 2}]


@cluster_only
async def test_a_publish_retried_across_a_clear_is_not_fed_twice(
    redis_url, namespace, admin, monkeypatch
):
    # (older than the day's changes, same cause) a publish whose index answer is lost; a
    # clear by another process applies the publish's entry (feed) and deleted the ops hash
    # holding its outcome; the retry found no outcome and published again: the event was in
    # the feed twice and the cleared session re-created by a retry.
    agent = AgentCoordinator("s-pc", redis_url, namespace=namespace)
    clearer = AgentCoordinator("s-pc", redis_url, namespace=namespace)

    async def meanwhile():
        await clearer.clear()

    armed = lose_next_index_answer(monkeypatch, meanwhile)
    armed["on"] = True
    await agent.publish(EventType.MESSAGE, {"once": True})
    assert not armed["on"]
    feed = await admin.xrange(agent.keys.feed)
    onces = [f for _, f in feed if json.loads(f["d"]) == {"once": True}]
    assert len(onces) == 1, feed


@cluster_only
async def test_prune_of_an_expired_session_keeps_its_outbox_only_briefly(
    redis_url, namespace, admin
):
    # A session that expired (its outbox with it, same TTL): prune's CLEAR writes a DROP entry,
    # which opened a new outbox for a whole retention (7 days by default), its applied record
    # kept as long (_prune_tombstones waits for the outbox): prune, whose job is to reclaim
    # memory, grew it. The outbox now lasts at most the op window, long enough for the DROP
    # to be applied and past any clock skew.
    coord = AgentCoordinator("s-pr", redis_url, namespace=namespace)
    keys = coord.keys.session("s-pr")
    await coord.publish(EventType.MESSAGE, {})
    await admin.delete(*keys.all())  # expired (every key of the session, outbox included)
    later = time.time() + coord.retention_ms / 1000 + 60
    index = SessionIndex(redis_url, namespace=namespace, clock=lambda: later)
    assert await index.prune() == 1
    left = {k: await admin.pttl(k) for k in keys.all() if await admin.exists(k)}
    assert set(left) == {keys.outbox}
    assert 0 < left[keys.outbox] <= scripts.OP_WINDOW_MS
    assert set(await admin.hgetall(keys.outbox)) == {"e", "lo", "n"}
