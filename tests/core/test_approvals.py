"""Approvals in the core: request, decide once, wait, expire, the index's queue, clear.

Every test runs on one Redis server and on a Redis Cluster (the ``make`` fixture)."""

from __future__ import annotations

import asyncio
import time

import pytest

from coordination import (
    AlreadyDecided,
    ApprovalExpired,
    CoordinationError,
    Decision,
    DecisionTimeout,
    EventType,
    InvalidAgentId,
    InvalidApproval,
    PayloadNotJSON,
    PayloadTooLarge,
    ReservedEventType,
    SessionClosed,
    UnknownApproval,
)

from ..waiting import eventually
from .conftest import left_after_clear


async def _server_time(coord) -> float:
    seconds, micros = await coord.redis.time()
    return seconds + micros / 1_000_000


async def _past_expiry(coord, approval) -> None:
    """Wait until the server's clock (which decides expiry) has passed the approval's."""

    async def passed():
        return await _server_time(coord) > approval.expires_at

    await eventually(passed, f"the server clock to pass {approval.expires_at}")


async def test_request_publishes_queues_and_counts(make):
    coord = make.coordinator("s-ask", source="billing")
    approval = await coord.request_approval(
        "refund", {"order": "A1", "amount": 120.5}, reason="over the limit", agent_id="billing"
    )
    assert approval.pending and approval.action == "refund"
    assert approval.args == {"order": "A1", "amount": 120.5}
    assert approval.reason == "over the limit" and approval.agent_id == "billing"
    assert approval.expires_at is None and approval.requested_at > 0
    [event] = await coord.events()
    assert event.type is EventType.APPROVAL_REQUESTED and event.id == approval.request_event_id
    assert event.source == "billing"
    assert event.data == {
        "approval_id": approval.approval_id,
        "action": "refund",
        "args": {"order": "A1", "amount": 120.5},
        "reason": "over the limit",
        "agent_id": "billing",
        "expires_at": None,
    }
    index = make.index()
    assert (await index.get_session("s-ask")).pending_approvals == 1
    page = await index.pending_approvals()
    assert [(a.session_id, a.approval_id) for a in page.approvals] == [
        ("s-ask", approval.approval_id)
    ]
    assert page.approvals[0].args == {"order": "A1", "amount": 120.5}
    assert page.next_cursor is None and await index.approval_count() == 1
    assert await coord.get_approval(approval.approval_id) == approval
    assert await coord.approvals(status="pending") == [approval]


async def test_approve_publishes_the_decision_and_leaves_the_queue(make):
    coord = make.coordinator("s-yes")
    approval = await coord.request_approval("refund", {"amount": 80}, agent_id="billing")
    decision = await make.coordinator("s-yes").decide(
        approval.approval_id, True, by="human:alice", message="fine", args={"amount": 70}
    )
    assert isinstance(decision, Decision)
    assert (decision.approved, decision.by, decision.message, decision.args) == (
        True,
        "human:alice",
        "fine",
        {"amount": 70},
    )
    last = (await coord.events())[-1]
    assert last.type is EventType.APPROVAL_DECIDED and last.id == decision.event_id
    assert last.source == "human:alice"
    assert last.data == {
        "approval_id": approval.approval_id,
        "approved": True,
        "by": "human:alice",
        "message": "fine",
        "args": {"amount": 70},
        "action": "refund",
    }
    stored = await coord.get_approval(approval.approval_id)
    assert stored.status == "approved" and stored.decided_args == {"amount": 70}
    assert stored.args == {"amount": 80}  # what the agent asked for is kept
    index = make.index()
    assert (await index.get_session("s-yes")).pending_approvals == 0
    assert (await index.pending_approvals()).approvals == []
    assert await index.approval_count() == 0


async def test_reject_with_a_message(make):
    coord = make.coordinator("s-no")
    approval = await coord.request_approval("delete_account", {"user": 7})
    decision = await coord.decide(approval.approval_id, False, by="human:bob", message="No.")
    assert (decision.approved, decision.message, decision.args) == (False, "No.", None)
    assert (await coord.get_approval(approval.approval_id)).status == "rejected"


async def test_the_first_decision_wins_and_a_second_names_it(make):
    coord = make.coordinator("s-twice")
    approval = await coord.request_approval("refund", {})
    first = await coord.decide(approval.approval_id, False, by="human:alice")
    with pytest.raises(AlreadyDecided) as info:
        await coord.decide(approval.approval_id, True, by="human:bob")
    err = info.value
    assert (err.decided_by, err.approved) == ("human:alice", False)
    assert err.decided_at == first.decided_at
    assert "human:alice" in str(err) and "rejected" in str(err) and "UTC" in str(err)
    assert (await coord.get_approval(approval.approval_id)).decided_by == "human:alice"


async def test_ten_supervisors_deciding_at_once_make_one_decision(make):
    approval = await make.coordinator("s-race").request_approval("refund", {"amount": 5})
    deciders = [make.coordinator("s-race") for _ in range(10)]
    outcomes = await asyncio.gather(
        *(
            c.decide(approval.approval_id, i % 2 == 0, by=f"human:user{i}")
            for i, c in enumerate(deciders)
        ),
        return_exceptions=True,
    )
    won = [o for o in outcomes if isinstance(o, Decision)]
    lost = [o for o in outcomes if isinstance(o, AlreadyDecided)]
    assert len(won) == 1 and len(lost) == 9
    assert all(e.decided_by == won[0].by and e.approved == won[0].approved for e in lost)
    decided = [e for e in await deciders[0].events() if e.type is EventType.APPROVAL_DECIDED]
    assert len(decided) == 1 and decided[0].data["by"] == won[0].by
    assert (await make.index().get_session("s-race")).pending_approvals == 0


async def test_unknown_and_malformed_ids(make):
    coord = make.coordinator("s-ids")
    with pytest.raises(UnknownApproval, match="no approval 'nope'"):
        await coord.decide("nope", True, by="human:alice")
    with pytest.raises(UnknownApproval):
        await coord.wait_for_decision("nope", timeout=1)
    assert await coord.get_approval("nope") is None
    for bad in ["", "..", "a/../b", "{x}", "a b", "x" * 65, 42, None, "é", "a\x00"]:
        with pytest.raises(InvalidApproval):
            await coord.decide(bad, True, by="human:alice")
        if bad is not None:  # no id: one is made up
            with pytest.raises(InvalidApproval):
                await coord.request_approval("refund", {}, approval_id=bad)


async def test_bad_requests_and_decisions_are_refused_before_anything_is_written(make):
    coord = make.coordinator("s-bad", max_payload_bytes=1000)
    for action in ["", "   ", "x" * 201, 42, None, "\ud800", "a\nb"]:
        with pytest.raises(InvalidApproval):
            await coord.request_approval(action, {})
    with pytest.raises(PayloadTooLarge):
        await coord.request_approval("refund", {"blob": "x" * 2000})
    for args in [{1, 2}, {"f": float("nan")}, {1: "int key"}, object()]:
        with pytest.raises(PayloadNotJSON):
            await coord.request_approval("refund", args)
    for expires in [0, -1, float("nan"), float("inf"), True, "5"]:
        with pytest.raises(InvalidApproval):
            await coord.request_approval("refund", {}, expires_in=expires)
    with pytest.raises(InvalidAgentId):
        await coord.request_approval("refund", {}, agent_id="bad\nagent")
    with pytest.raises(InvalidApproval):
        await coord.request_approval("refund", {}, reason=42)
    assert await coord.events() == []

    approval = await coord.request_approval("refund", {"note": "\ud800 lone"})
    assert (await coord.get_approval(approval.approval_id)).args == {"note": "\ud800 lone"}
    aid = approval.approval_id
    for approved in ["yes", 1, None]:
        with pytest.raises(InvalidApproval):
            await coord.decide(aid, approved, by="human:alice")
    for by in ["", "a\nb", "\ud800", 42]:
        with pytest.raises(InvalidAgentId):
            await coord.decide(aid, True, by=by)
    with pytest.raises(InvalidApproval):
        await coord.decide(aid, True, by="human:alice", message=42)
    with pytest.raises(InvalidApproval, match="only come with an approval"):
        await coord.decide(aid, False, by="human:alice", args={"amount": 1})
    with pytest.raises(PayloadTooLarge):
        await coord.decide(aid, True, by="human:alice", args={"blob": "x" * 2000})
    assert (await coord.get_approval(aid)).pending
    assert all(
        issubclass(e, CoordinationError)
        for e in (InvalidApproval, UnknownApproval, AlreadyDecided, ApprovalExpired)
    )


async def test_approval_events_are_reserved(make):
    coord = make.coordinator("s-reserved")
    for etype in (EventType.APPROVAL_REQUESTED, EventType.APPROVAL_DECIDED):
        with pytest.raises(ReservedEventType, match="request_approval, decide"):
            await coord.publish(etype, {"approval_id": "x"})


async def test_closed_sessions_refuse_requests_and_humans_in_control_do_not(make):
    coord = make.coordinator("s-closed")
    await coord.publish(EventType.MESSAGE, {})
    await coord.close()
    with pytest.raises(SessionClosed):
        await coord.request_approval("refund", {})
    held = make.coordinator("s-held")
    await held.take_over("human:alice")
    approval = await held.request_approval("refund", {})
    assert (await held.decide(approval.approval_id, True, by="human:alice")).approved


async def test_an_approval_id_makes_the_request_idempotent(make):
    coord = make.coordinator("s-idem")
    first = await coord.request_approval("refund", {"a": 1}, approval_id="call-1")
    again = await coord.request_approval("refund", {"a": 1}, approval_id="call-1")
    assert again == first
    assert len(await coord.events()) == 1
    assert (await make.index().get_session("s-idem")).pending_approvals == 1


async def test_expired_approvals_cannot_be_decided(make):
    coord = make.coordinator("s-exp")
    approval = await coord.request_approval("refund", {}, expires_in=0.05)
    assert approval.expires_at == pytest.approx(approval.requested_at + 0.05, abs=0.002)
    await _past_expiry(coord, approval)
    with pytest.raises(ApprovalExpired):
        await coord.decide(approval.approval_id, True, by="human:alice")
    stored = await coord.get_approval(approval.approval_id)
    assert stored.status == "expired" and stored.decided_by is None
    last = (await coord.events())[-1]
    assert last.type is EventType.APPROVAL_DECIDED
    assert last.data["expired"] is True and last.data["approved"] is False
    with pytest.raises(ApprovalExpired):  # and stays so
        await coord.decide(approval.approval_id, False, by="human:bob")
    with pytest.raises(ApprovalExpired):
        await coord.wait_for_decision(approval.approval_id)
    assert (await make.index().get_session("s-exp")).pending_approvals == 0
    assert (await make.index().pending_approvals()).approvals == []


async def test_waiting_out_an_expiry_marks_it_expired(make):
    coord = make.coordinator("s-exp-wait")
    approval = await coord.request_approval("refund", {}, expires_in=0.3)
    with pytest.raises(ApprovalExpired):
        await coord.wait_for_decision(approval.approval_id, timeout=30)
    assert (await coord.get_approval(approval.approval_id)).status == "expired"
    assert await make.index().approval_count() == 0


async def test_wait_returns_at_once_when_decided(make):
    coord = make.coordinator("s-wait-done")
    approval = await coord.request_approval("refund", {})
    await coord.decide(approval.approval_id, True, by="human:alice")
    decision = await coord.wait_for_decision(approval.approval_id, timeout=0)
    assert decision.approved and decision.by == "human:alice"


async def test_wait_follows_a_decision_made_elsewhere(make):
    coord = make.coordinator("s-wait")
    approval = await coord.request_approval("refund", {})
    other = await coord.request_approval("other", {})
    waiter = asyncio.create_task(coord.wait_for_decision(approval.approval_id, timeout=30))
    # another approval's decision does not end the wait
    await make.coordinator("s-wait").decide(other.approval_id, True, by="human:bob")
    await make.coordinator("s-wait").decide(
        approval.approval_id, False, by="human:alice", message="no"
    )
    decision = await asyncio.wait_for(waiter, 30)
    assert (decision.approved, decision.by, decision.message) == (False, "human:alice", "no")


async def test_a_wait_ends_when_the_session_is_closed(make):
    coord = make.coordinator("s-wait-closed")
    approval = await coord.request_approval("refund", {})
    waiter = asyncio.create_task(coord.wait_for_decision(approval.approval_id))  # no timeout
    await make.coordinator("s-wait-closed").close(by="human:ann", reason="resolved by phone")
    with pytest.raises(SessionClosed):
        await asyncio.wait_for(waiter, 30)


async def test_wait_times_out_and_leaves_the_approval_pending(make):
    coord = make.coordinator("s-wait-out")
    approval = await coord.request_approval("refund", {})
    started = time.monotonic()
    with pytest.raises(DecisionTimeout) as info:
        await coord.wait_for_decision(approval.approval_id, timeout=0.2)
    assert time.monotonic() - started >= 0.2
    assert isinstance(info.value, TimeoutError) and "still pending" in str(info.value)
    assert (await coord.get_approval(approval.approval_id)).pending
    with pytest.raises(InvalidApproval):
        await coord.wait_for_decision(approval.approval_id, timeout=-1)


async def test_index_lists_pending_approvals_oldest_first_in_pages(make):
    index = make.index()
    asked = []
    for i in range(5):
        coord = make.coordinator(f"s-q{i}")
        asked.append((f"s-q{i}", (await coord.request_approval(f"act{i}", {"i": i})).approval_id))
    decided_sid, decided_id = asked.pop(2)
    await make.coordinator(decided_sid).decide(decided_id, True, by="human:alice")
    first = await index.pending_approvals(limit=2)
    assert [(a.session_id, a.approval_id) for a in first.approvals] == asked[:2]
    second = await index.pending_approvals(limit=2, cursor=first.next_cursor)
    assert [(a.session_id, a.approval_id) for a in second.approvals] == asked[2:]
    assert second.next_cursor is None
    assert await index.approval_count() == 4


async def test_stale_queue_entries_are_dropped_when_read(make):
    """On a Cluster a decision's removal can reach the queue before the request's entry; a
    cleared or expired session leaves entries too. Readers check and drop them."""
    index = make.index()
    coord = make.coordinator("s-stale")
    decided = await coord.request_approval("refund", {})
    live = await make.coordinator("s-live").request_approval("refund", {})
    await coord.decide(decided.approval_id, True, by="human:alice")
    key = index.keys.approvals
    await index.redis.zadd(
        key,
        {
            f"s-stale\0{decided.approval_id}": 1,  # the late ZADD of a decided approval
            "s-gone\0abc": 2,  # a session that no longer exists
            "no-separator": 3,
            "\0": 4,
        },
    )
    assert await index.approval_count() == 5
    page = await index.pending_approvals()
    assert [(a.session_id, a.approval_id) for a in page.approvals] == [("s-live", live.approval_id)]
    assert await index.approval_count() == 1


async def test_clear_removes_approvals_runs_and_queue_entries(make, ns_keys):
    coord = make.coordinator("s-clear")
    await coord.request_approval("refund", {})
    await coord.save_run("run1", {"state": "x"})
    await coord.clear()
    assert await coord.approvals() == [] and await coord.saved_runs() == {}
    assert ns_keys() & set(coord.keys.session("s-clear").all()) == left_after_clear(coord)
    assert await make.index().approval_count() == 0


async def test_saved_runs_are_claimed_once(make):
    coord = make.coordinator("s-runs")
    await coord.save_run("run1", {"state": "abc", "approvals": ["a1"]})
    claims = await asyncio.gather(
        *(make.coordinator("s-runs").claim_run("run1", f"worker{i}") for i in range(5))
    )
    assert sorted(claims) == [False] * 4 + [True]
    [(name, (value, claim))] = (await coord.saved_runs()).items()
    assert name == "run1" and value["state"] == "abc" and claim["by"].startswith("worker")
    await coord.save_run("run1", {"state": "def"})  # saved again: claimable again
    assert await coord.claim_run("run1", "worker9")
    await coord.delete_run("run1")
    assert await coord.saved_runs() == {}
    assert not await coord.claim_run("run1", "worker9")


async def test_records_written_around_the_core_are_not_trusted(make):
    """Anyone holding REDIS_URL can write the approvals hash; readers skip what the core
    could not have written, and deciding one fails as a CoordinationError."""
    coord = make.coordinator("s-forged")
    real = await coord.request_approval("refund", {})
    key = coord.keys.session("s-forged").approvals
    await coord.redis.hset(
        key,
        mapping={
            "notjson": "{{{",
            "list": "[1, 2]",
            "badstatus": '{"id": "badstatus", "status": "approved!!"}',
            "deep": "[" * 100_000,
        },
    )
    await coord.redis.zadd(make.index().keys.approvals, {"s-forged\0notjson": 1})
    assert await coord.get_approval("notjson") is None
    assert await coord.get_approval("deep") is None
    assert [a.approval_id for a in await coord.approvals()] == [real.approval_id]
    for forged in ("notjson", "list", "badstatus"):
        with pytest.raises(CoordinationError):
            await coord.decide(forged, True, by="human:alice")
    page = await make.index().pending_approvals()
    assert [a.approval_id for a in page.approvals] == [real.approval_id]
    assert (await coord.decide(real.approval_id, True, by="human:alice")).approved


async def test_a_signed_decision_is_verified_and_a_forged_one_is_refused(make, redis_sync):
    import json

    from coordination import DecisionSigner, DecisionVerifier, UnverifiedDecision

    coord = make.coordinator("s-signed")
    signer = DecisionSigner.from_secret("the dashboard's secret", coord.namespace)
    verifier = DecisionVerifier(signer.public_key)
    dashboard = make.coordinator("s-signed")
    rogue = make.coordinator("s-signed", source="rogue_agent")  # the agents' credentials

    good = await coord.request_approval("refund", {"amount": 5})
    await dashboard.decide(
        good.approval_id, True, by="human:ann", message="ok", args={"amount": 4}, signer=signer
    )
    decision = await coord.wait_for_decision(good.approval_id, verifier=verifier)
    assert decision.approved and decision.args == {"amount": 4} and decision.signature

    forged = await coord.request_approval("refund", {"amount": 500})
    await rogue.decide(forged.approval_id, True, by="human:ann")  # names a supervisor
    with pytest.raises(UnverifiedDecision) as info:
        await coord.wait_for_decision(forged.approval_id, verifier=verifier)
    assert info.value.claimed_by == "human:ann"

    # a signed rejection turned into an approval straight in Redis
    altered = await coord.request_approval("wire", {"to": "x"})
    await dashboard.decide(altered.approval_id, False, by="human:ann", signer=signer)
    key = coord.keys.session("s-signed").approvals
    record = json.loads(redis_sync.hget(key, altered.approval_id))
    redis_sync.hset(key, altered.approval_id, json.dumps({**record, "status": "approved"}))
    with pytest.raises(UnverifiedDecision):
        await coord.wait_for_decision(altered.approval_id, verifier=verifier)

    # a real signature copied onto another request
    moved = await coord.request_approval("refund", {"amount": 5})
    await rogue.decide(moved.approval_id, True, by="human:ann", message="ok", args={"amount": 4})
    record = json.loads(redis_sync.hget(key, moved.approval_id))
    redis_sync.hset(key, moved.approval_id, json.dumps({**record, "signature": decision.signature}))
    with pytest.raises(UnverifiedDecision):
        await coord.wait_for_decision(moved.approval_id, verifier=verifier)

    # another deployment's key, and keys that are not keys
    other = DecisionVerifier(DecisionSigner.from_secret("another", coord.namespace).public_key)
    with pytest.raises(UnverifiedDecision):
        await coord.wait_for_decision(good.approval_id, verifier=other)
    for bad in ("not a key", "", "x" * 44, "\ud800"):
        with pytest.raises(InvalidApproval):
            DecisionVerifier(bad)
    # without a verifier (no key configured) decisions are taken as before
    assert (await coord.wait_for_decision(forged.approval_id)).approved
