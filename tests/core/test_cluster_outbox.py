"""The Cluster outbox (issue 17's two steps): its entries are numbered "<epoch>-<n>" and each
number is applied on the index slot once, so a number must never come round again."""

from __future__ import annotations

import json

from coordination import AgentCoordinator, AtomicOperations, EventType, SessionIndex

from .conftest import cluster_only


@cluster_only
async def test_outbox_numbers_go_on_after_everything_was_applied(redis_url, namespace, admin):
    # A renew writes no index entry, and acknowledges the claim's: everything is applied.
    # The outbox used to be deleted then, and the next entry opened a new epoch; in the same
    # millisecond it restarted at 1, was skipped as applied, and the index stayed stale (seen
    # as test_races' index mismatches on a Cluster, 2 runs in 3 with --slow).
    coord = AgentCoordinator("s-out", redis_url, namespace=namespace)
    atomic = AtomicOperations(redis_url, namespace=namespace)
    outbox = coord.keys.session("s-out").outbox
    await coord.publish(EventType.HANDOFF_READY, {})
    epoch = await admin.hget(outbox, "e")
    assert await atomic.claim_handoff("s-out", "agent-1")
    await atomic.renew_handoff("s-out", "agent-1")
    assert await admin.hmget(outbox, ["e", "lo", "n"]) == [epoch, "3", "2"]
    await coord.publish(EventType.MESSAGE, {})
    assert await admin.hmget(outbox, ["e", "n"]) == [epoch, "3"]
    # and the index follows the session
    assert (await atomic.get_handoff("s-out")).agent_id == "agent-1"
    index = SessionIndex(redis_url, namespace=namespace)
    assert (await index.counts_by_status())["active"] == 1


@cluster_only
async def test_an_outbox_reopened_after_a_clear_in_the_same_millisecond_is_applied(
    redis_url, namespace, admin
):
    # A clear used to delete the session's outbox once applied, and the next write opened a
    # new one. Its numbers must come after everything the index applied for the session, even
    # when the old outbox was opened in the same millisecond (write, clear, write: six round
    # trips, under a millisecond on a fast network). Each round below sets the index's record
    # to an entry of an outbox opened in the server's current millisecond, as that old outbox
    # would have left it, deletes the outbox as a clear did, then writes: with epochs in
    # milliseconds the new entry landed in the same millisecond in most rounds, was skipped as
    # applied, and the index kept the session cleared.
    coord = AgentCoordinator("s-clr", redis_url, namespace=namespace)
    index = SessionIndex(redis_url, namespace=namespace)
    applied = coord.keys.applied
    for _ in range(20):
        await coord.publish(EventType.HANDOFF_READY, {})
        await coord.clear()
        await admin.delete(coord.keys.session("s-clr").outbox)  # as a clear did
        record = json.loads(await admin.hget(applied, "s-clr"))
        seconds, micros = await admin.time()
        record[3] = f"{seconds * 1000 + micros // 1000}-50"
        await admin.hset(applied, "s-clr", json.dumps(record))
        await coord.publish(EventType.HANDOFF_READY, {})
        assert (await index.counts_by_status())["waiting"] == 1
        await coord.clear()


@cluster_only
async def test_an_outbox_opened_by_an_older_version_after_a_clear_is_applied(
    redis_url, namespace, admin
):
    # During a rolling upgrade a process of the version before opens outboxes with epochs in
    # milliseconds, while the index may already hold a microsecond one's entry for the session
    # (cleared by a newer process). The older outbox's entries, later in time, must still apply.
    coord = AgentCoordinator("s-old", redis_url, namespace=namespace)
    index = SessionIndex(redis_url, namespace=namespace)
    outbox = coord.keys.session("s-old").outbox
    await coord.publish(EventType.HANDOFF_READY, {})
    await coord.clear()
    record = json.loads(await admin.hget(coord.keys.applied, "s-old"))
    assert len(record[3].split("-")[0]) == 16  # this version's epochs: microseconds
    # an older process deleted the outbox after the clear, and opens the next one, a
    # millisecond later than the clear's
    micros = int(record[3].split("-")[0])
    await admin.delete(outbox)
    await admin.hset(outbox, mapping={"e": str(micros // 1000 + 1), "lo": "1"})
    await coord.publish(EventType.HANDOFF_READY, {})
    assert await admin.hget(outbox, "n") == "1"
    assert (await index.counts_by_status())["waiting"] == 1
