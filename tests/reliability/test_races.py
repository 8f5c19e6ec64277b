"""Races on claims, leases and human control, many rounds, real Redis, separate connections."""

from __future__ import annotations

import asyncio
import random

import pytest

from coordination import (
    AgentCoordinator,
    AtomicOperations,
    CoordinationError,
    EventType,
    NotOwner,
    SessionIndex,
)
from coordination.core.connection import new_client
from coordination.core.keys import STATUSES

from ..conftest import redis_url_of_kind
from ..waiting import eventually, lease_gone

# The races run on one Redis server and on a Redis Cluster (issue 17).
redis_url = pytest.fixture(params=["single", "cluster"])(redis_url_of_kind)


async def test_exactly_one_claimer_wins_every_round(redis_url, namespace, slow, figures):
    rounds, claimers = (1000, 50) if slow else (100, 50)
    clients = [new_client(redis_url) for _ in range(claimers)]
    ops = [AtomicOperations(client=c, namespace=namespace) for c in clients]
    bad_rounds = []
    try:
        for r in range(rounds):
            results = await asyncio.gather(
                *(op.claim_handoff(f"race-{r}", f"a{i}") for i, op in enumerate(ops))
            )
            if results.count(True) != 1:
                bad_rounds.append((r, results.count(True)))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    figures(
        "claim race",
        f"{rounds} rounds x {claimers} claimers, one connection each",
        f"{rounds - len(bad_rounds)}/{rounds} rounds had exactly one winner",
    )
    assert bad_rounds == []


async def test_paused_owner_loses_its_lease(make, figures):
    atomic = make.atomic()
    assert await atomic.claim_handoff("lease", "sleepy", ttl=0.05)
    first = await atomic.get_handoff("lease")
    # the owner is "paused" past its TTL
    await eventually(lambda: lease_gone(atomic, "lease"), "the 50 ms lease to run out", timeout=10)
    assert await atomic.claim_handoff("lease", "awake")
    second = await atomic.get_handoff("lease")
    refused = 0
    for call in (
        atomic.release_handoff("lease", "sleepy"),
        atomic.renew_handoff("lease", "sleepy"),
    ):
        try:
            await call
        except NotOwner:
            refused += 1
    figures(
        "lease expiry",
        "owner paused past its TTL; renew and release afterwards",
        f"{refused}/2 refused with NotOwner; fencing token {first.token} < {second.token}",
    )
    assert refused == 2 and first.token < second.token


def replay(events) -> tuple[str | None, str | None]:
    """(claim owner, controller) as the event log says they must be."""
    owner = controller = None
    for e in events:
        d = e.data
        if e.type is EventType.HANDOFF_CLAIMED:
            owner = d["agent_id"]
        elif e.type is EventType.HANDOFF_RELEASED:
            owner = None
        elif e.type is EventType.HANDOFF_REASSIGNED:
            owner = d["to_agent"]
        elif e.type is EventType.HUMAN_TAKEOVER:
            controller, owner = d["supervisor"], None
        elif e.type is EventType.HUMAN_HANDBACK:
            controller, owner = None, d["to_agent"]
        elif e.type is EventType.SESSION_CLOSED:
            controller = owner = None
    return owner, controller


def round_actions(sid, atomic, coords, rng):
    """The operations agents and supervisors race with, each taking the actor's index."""
    return [
        lambda i: atomic[i].claim_handoff(sid, f"agent{i}"),
        lambda i: atomic[i].release_handoff(sid),
        lambda i: atomic[i].release_handoff(sid, f"agent{i}"),
        lambda i: atomic[i].reassign_handoff(sid, f"agent{(i + 1) % 6}", by=f"human:s{i}"),
        lambda i: coords[i].take_over(f"human:s{i}"),
        lambda i: coords[i].hand_back(rng.choice([None, f"agent{i}"]), by=f"human:s{i}"),
    ]


async def test_interleaved_takeover_claim_reassign_release_agree_with_the_log(
    redis_url, namespace, slow, figures
):
    rounds = 300 if slow else 40
    rng = random.Random(1234)
    clients = [new_client(redis_url) for _ in range(6)]
    index = SessionIndex(client=clients[0], namespace=namespace)
    mismatches = operations = successes = index_mismatches = 0
    try:
        for r in range(rounds):
            sid = f"mix-{r}"
            atomic = [AtomicOperations(client=c, namespace=namespace) for c in clients]
            coords = [AgentCoordinator(sid, client=c, namespace=namespace) for c in clients]
            actions = round_actions(sid, atomic, coords, rng)
            for _ in range(
                rng.randint(3, 8)
            ):  # a few waves of concurrent, randomly ordered operations
                wave = [rng.choice(actions) for _ in range(6)]
                results = await asyncio.gather(
                    *(op(i) for i, op in enumerate(wave)), return_exceptions=True
                )
                operations += len(results)
                successes += sum(
                    1
                    for x in results
                    if x is True or (isinstance(x, int) and not isinstance(x, bool))
                )
                unexpected = [
                    x
                    for x in results
                    if isinstance(x, Exception) and not isinstance(x, CoordinationError)
                ]
                assert unexpected == []
            events = await coords[0].events(limit=1000)
            claim = await atomic[0].get_handoff(sid)
            expected_owner, expected_controller = replay(events)
            if (claim.agent_id if claim else None, await coords[0].controller()) != (
                expected_owner,
                expected_controller,
            ):
                mismatches += 1
            if await _index_disagrees(index, sid):
                index_mismatches += 1
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    figures(
        "takeover / claim / reassign / release / hand back",
        f"{rounds} rounds, {operations} concurrent operations ({successes} succeeded)",
        f"final state matched the event log in {rounds - mismatches}/{rounds} rounds, "
        f"the index matched the session in {rounds - index_mismatches}/{rounds}",
    )
    assert (mismatches, index_mismatches) == (0, 0)


async def _index_disagrees(index: SessionIndex, sid: str) -> bool:
    """Whether the index lists ``sid`` other than its own meta says: under exactly its status,
    and under its owner only."""
    meta = await index.redis.hgetall(index.keys.session(sid).meta)
    listed = [s for s in STATUSES if await index.redis.zscore(index.keys.status[s], sid)]
    owners = [
        m.split("\0", 1)[0]
        for m in await index.redis.zrange(index.keys.owners, 0, -1)
        if m.endswith("\0" + sid)
    ]
    expected_owners = [meta["owner"]] if meta.get("owner") else []
    return listed != [meta.get("status") or "active"] or owners != expected_owners
