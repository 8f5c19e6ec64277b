"""Handoff claims: one winner, leases, fencing tokens, ownership checked in Lua."""

from __future__ import annotations

import asyncio

import pytest

from coordination import AtomicOperations, EventType, NotOwner, SessionTakenOver
from coordination.core.connection import new_client

from ..waiting import eventually, lease_gone


async def test_one_winner_among_100_claimers_on_separate_connections(redis_url, namespace):
    clients = [new_client(redis_url) for _ in range(100)]
    try:
        ops = [AtomicOperations(client=c, namespace=namespace) for c in clients]
        results = await asyncio.gather(
            *(op.claim_handoff("s-race", f"agent-{i}") for i, op in enumerate(ops))
        )
        assert results.count(True) == 1
        winner = f"agent-{results.index(True)}"
        handoff = await ops[0].get_handoff("s-race")
        assert handoff.agent_id == winner and handoff.token == 1
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


async def test_claim_publishes_its_event_in_the_same_step(make):
    atomic, coord = make.atomic(), make.coordinator("s-ev")
    assert await atomic.claim_handoff("s-ev", "billing")
    [event] = await coord.events()
    assert event.type is EventType.HANDOFF_CLAIMED
    assert event.data == {"agent_id": "billing", "token": 1, "ttl_ms": 30000}


async def test_expired_lease_can_be_claimed_and_stale_owner_is_refused(make):
    atomic = make.atomic()
    assert await atomic.claim_handoff("s-lease", "first", ttl=0.05)
    first = await atomic.get_handoff("s-lease")
    # the lease runs out on the server's clock
    await eventually(
        lambda: lease_gone(atomic, "s-lease"), "the 50 ms lease to run out", timeout=10
    )
    assert await atomic.claim_handoff("s-lease", "second")
    second = await atomic.get_handoff("s-lease")
    assert second.token > first.token
    with pytest.raises(NotOwner) as info:
        await atomic.release_handoff("s-lease", "first")
    assert info.value.current_owner == "second"
    with pytest.raises(NotOwner):
        await atomic.renew_handoff("s-lease", "first")
    assert (await atomic.get_handoff("s-lease")).agent_id == "second"


async def test_renew_extends_the_lease(make):
    atomic = make.atomic()
    await atomic.claim_handoff("s-renew", "a", ttl=1)
    before = await atomic.get_handoff("s-renew")
    renewed = await atomic.renew_handoff("s-renew", "a", ttl=60)
    assert renewed.token == before.token
    assert renewed.expires_at > before.expires_at + 50


async def test_forced_release_and_release_of_nothing(make):
    atomic = make.atomic()
    assert await atomic.release_handoff("s-none") is False
    await atomic.claim_handoff("s-rel", "a")
    assert await atomic.release_handoff("s-rel") is True
    assert await atomic.get_handoff("s-rel") is None
    events = await make.coordinator("s-rel").events()
    assert events[-1].type is EventType.HANDOFF_RELEASED
    assert events[-1].data["forced"] is True and events[-1].data["agent_id"] == "a"


async def test_reassign_moves_the_claim_with_a_new_token(make):
    atomic = make.atomic()
    await atomic.claim_handoff("s-re", "a")
    token = await atomic.reassign_handoff("s-re", "b", by="human:ann", expected_owner="a")
    handoff = await atomic.get_handoff("s-re")
    assert (handoff.agent_id, handoff.token) == ("b", token) and token == 2
    with pytest.raises(NotOwner):  # the page showed "a", but it is "b" now
        await atomic.reassign_handoff("s-re", "c", expected_owner="a")
    last = (await make.coordinator("s-re").events())[-1]
    assert last.type is EventType.HANDOFF_REASSIGNED
    assert last.data["from_agent"] == "a" and last.data["to_agent"] == "b"
    assert last.data["by"] == "human:ann" and last.source == "human:ann"


async def test_claims_are_refused_while_a_human_controls_the_session(make):
    atomic, coord = make.atomic(), make.coordinator("s-human")
    await atomic.claim_handoff("s-human", "bot")
    assert await coord.take_over("human:ann") is True
    assert await atomic.get_handoff("s-human") is None
    assert await atomic.claim_handoff("s-human", "bot") is False
    with pytest.raises(SessionTakenOver):
        await atomic.reassign_handoff("s-human", "bot2")
    await coord.hand_back("bot", by="human:ann")
    assert (await atomic.get_handoff("s-human")).agent_id == "bot"


async def test_clear_releases_only_this_objects_claims(make):
    mine, theirs = make.atomic(), make.atomic()
    await mine.claim_handoff("s-mine", "a")
    await theirs.claim_handoff("s-theirs", "b")
    await mine.clear()
    assert await mine.get_handoff("s-mine") is None
    assert (await mine.get_handoff("s-theirs")).agent_id == "b"
