"""Interventions the agents honour: a hand-back carries the human's resolution, and the demo
agent that continues reads the human's reply, note and resolution and does not escalate again
for the reason the human resolved. Real demo agent code, real Redis (single server and Cluster).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from coordination import AgentCoordinator, AtomicOperations, EventType, SessionIndex
from coordination.devtools.demo import Fleet, FleetSettings
from coordination.integrations.human_context import read_human_context
from coordination.models import ApiToken, AuditEntry
from tests.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

DEADLINE = 20.0


async def _wait_for(coord: AgentCoordinator, *etypes: EventType, after: str = "0") -> object:
    """The first event of one of ``etypes`` after ``after``; fails the test after DEADLINE s."""
    async for event in coord.subscribe(timeout=DEADLINE, types=etypes, since=after):
        return event
    pytest.fail(f"no {'/'.join(t.value for t in etypes)} event within {DEADLINE} s")


async def _running_fleet(redis_url: str, namespace: str, pace: float):
    """The demo desk with no new sessions of its own: it only reacts to the feed."""
    settings = FleetSettings(
        sessions=0, pace=pace, turns=(3, 3), escalation_chance=0, seed=7, pickup_after=1.0
    )
    fleet = Fleet(redis_url, namespace, settings, offline=True)
    task = asyncio.create_task(fleet.run())
    await eventually(lambda: fleet.index.agents(), "the demo agents to report in")
    yield fleet
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def fleet(redis_url, namespace):
    """Agents that answer at once."""
    async for running in _running_fleet(redis_url, namespace, pace=0):
        yield running


@pytest.fixture
async def paced_fleet(redis_url, namespace):
    """Agents that take about a second a turn, so a supervisor can act while they work."""
    async for running in _running_fleet(redis_url, namespace, pace=1.0):
        yield running


async def _start_escalating_session(fleet: Fleet, sid: str) -> AgentCoordinator:
    """What triage does, with the escalation hint set: the billing specialist will escalate."""
    coord = fleet.coordinator(sid, source="triage")
    query = "I want a refund of $2,400 for the annual plan right now!"
    await coord.publish(EventType.MESSAGE, {"role": "customer", "text": query}, source="customer")
    await coord.update_state(
        {
            "customer_query": query,
            "category": "billing",
            "escalation_hint": "refund over the limit",
        },
        by="triage",
    )
    await coord.publish(
        EventType.HANDOFF_READY,
        {"from_agent": "triage", "to_agent": "billing_specialist", "query": query},
    )
    return coord


async def _post(client: AsyncClient, action: str, sid: str, **data) -> str:
    response = await client.post(f"/act/{action}/{sid}/", data, headers={"HX-Request": "true"})
    assert response.status_code == 200
    return response.content.decode()


async def _signed_in(user) -> AsyncClient:
    client = AsyncClient()
    await client.aforce_login(user)
    return client


async def test_hand_back_with_resolution_the_agent_continues_and_does_not_escalate_again(
    fleet, supervisor
):
    sid = "demo-honour1"
    coord = await _start_escalating_session(fleet, sid)
    escalated = await _wait_for(coord, EventType.ESCALATED)
    assert escalated.data["reason"] == "refund over the limit"
    await _wait_for(coord, EventType.HANDOFF_RELEASED, after=escalated.id)  # the agent let go

    client = await _signed_in(supervisor)
    page = await _post(client, "take-over", sid)
    assert "You now control this session." in page
    calls_before = len(fleet.model.calls)
    await _post(client, "reply", sid, text="Your refund of $2,400 is approved <b>today</b>.")
    await _post(client, "note", sid, text="Checked the contract: annual refund ok")
    page = await _post(
        client,
        "hand-back",
        sid,
        to_agent="",
        expected_controller="human:sup",
        resolution="refund approved",
    )
    assert "Handed back to the queue (resolution: refund approved)." in page

    handback = await _wait_for(coord, EventType.HUMAN_HANDBACK, after=escalated.id)
    assert handback.data["resolution"] == "refund approved"
    assert handback.data["by"] == "human:sup"
    ended = await _wait_for(coord, EventType.SESSION_CLOSED, EventType.ESCALATED, after=handback.id)
    assert ended.type is EventType.SESSION_CLOSED, f"escalated again: {ended.data}"
    assert ended.data["reason"] == "resolved"

    after = [e for e in await coord.events(after=handback.id, limit=1000)]
    assert EventType.ESCALATED not in [e.type for e in after], "escalated again after hand-back"
    replies = [e for e in after if e.type is EventType.MESSAGE and e.data.get("role") == "agent"]
    assert len(replies) == 3  # the specialist's three turns, then it resolved the session
    # the model's input after the hand-back holds the human's reply, note and resolution
    asked = [text for _, text in fleet.model.calls[calls_before:]]
    assert asked, "the agent did not run after the hand-back"
    first = asked[0]
    assert "refund approved" in first
    assert "Your refund of $2,400 is approved <b>today</b>." in first
    assert "Checked the contract: annual refund ok" in first
    assert "refund over the limit" in first  # named as resolved, not to be escalated again
    inputs = getattr(fleet.model, "inputs", None)
    if inputs is not None:  # the whole input, where the model records it
        assert any("refund approved" in str(i) for i in inputs[calls_before:])


async def test_hand_back_without_resolution_keeps_the_event_as_before(make_coord):
    coord = make_coord("s-plain-handback")
    await coord.take_over("human:ann")
    await coord.hand_back(None, by="human:ann")
    [event] = [e for e in await coord.events() if e.type is EventType.HUMAN_HANDBACK]
    assert "resolution" not in event.data
    assert event.data["by"] == "human:ann"


async def test_resolution_over_the_limit_is_refused_and_nothing_changes(make_coord, supervisor):
    coord = make_coord("s-long-resolution")
    await coord.take_over("human:sup")
    client = await _signed_in(supervisor)
    page = await _post(client, "hand-back", "s-long-resolution", to_agent="", resolution="x" * 4001)
    assert "The resolution is 4001 characters; the limit is 4000." in page
    assert await coord.controller() == "human:sup"


async def test_api_hand_back_carries_the_resolution(make_coord, supervisor):
    coord = make_coord("s-api-handback")
    await coord.take_over("human:sup")
    token = (await sync_to_async(ApiToken.issue)(supervisor, "test"))[1]
    response = await AsyncClient().post(
        "/api/v1/interventions/hand-back/s-api-handback",
        {"resolution": "replacement shipped"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.content
    assert response.json()["ok"] is True
    [event] = [e for e in await coord.events() if e.type is EventType.HUMAN_HANDBACK]
    assert event.data["resolution"] == "replacement shipped"


@pytest.fixture
def make_coord(redis_url, namespace):
    def make(sid: str) -> AgentCoordinator:
        return AgentCoordinator(sid, redis_url, namespace=namespace)

    return make


# -- reassign: only agents the index knows; an escalation waits for the agent -------------------


@pytest.fixture
def index(redis_url, namespace):
    return SessionIndex(redis_url, namespace=namespace)


@pytest.fixture
def atomic(redis_url, namespace):
    return AtomicOperations(redis_url, namespace=namespace)


async def test_reassign_to_an_agent_that_never_reported_in_is_refused(
    make_coord, index, atomic, supervisor
):
    coord = make_coord("s-ra-unknown")
    await coord.publish(EventType.MESSAGE, {"role": "customer", "text": "hi"})
    await atomic.claim_handoff("s-ra-unknown", "billing_specialist")
    client = await _signed_in(supervisor)
    page = await _post(client, "reassign", "s-ra-unknown", to_agent_typed="no_such_agent")
    assert "No agent named &#x27;no_such_agent&#x27; has reported in" in page
    assert (await index.get_session("s-ra-unknown")).claim_agent == "billing_specialist"
    entry = await AuditEntry.objects.alatest("id")
    assert (entry.action, entry.outcome) == ("reassign", "refused")

    # a known agent is accepted, and so is an unknown one when the supervisor forces it
    await index.heartbeat("tech_specialist")
    page = await _post(client, "reassign", "s-ra-unknown", to_agent="tech_specialist")
    assert "Reassigned to tech_specialist" in page
    page = await _post(client, "reassign", "s-ra-unknown", to_agent_typed="new_bot", force="on")
    assert "Reassigned to new_bot" in page
    assert (await index.get_session("s-ra-unknown")).claim_agent == "new_bot"


async def test_the_session_page_lists_known_agents_with_their_status(make_coord, index, supervisor):
    coord = make_coord("s-ra-list")
    await coord.publish(EventType.MESSAGE, {"role": "customer", "text": "hi"})
    await index.heartbeat("tech_specialist")
    client = await _signed_in(supervisor)
    page = (await client.get("/sessions/s-ra-list/")).content.decode()
    assert "tech_specialist — online" in page
    assert 'name="force"' in page


async def test_api_and_bulk_reassign_refuse_unknown_agents_unless_forced(
    make_coord, index, atomic, supervisor
):
    for sid in ("s-ra-api1", "s-ra-api2"):
        await make_coord(sid).publish(EventType.MESSAGE, {"role": "customer", "text": "hi"})
    token = (await sync_to_async(ApiToken.issue)(supervisor, "test"))[1]
    api = AsyncClient()
    headers = {"Authorization": f"Bearer {token}"}

    async def call(path, body):
        return await api.post(path, body, content_type="application/json", headers=headers)

    refused = await call("/api/v1/interventions/reassign/s-ra-api1", {"to_agent": "bad_agent"})
    assert refused.status_code == 409
    assert "No agent named 'bad_agent' has reported in" in refused.json()["message"]
    forced = await call(
        "/api/v1/interventions/reassign/s-ra-api1", {"to_agent": "bad_agent", "force": True}
    )
    assert forced.status_code == 200 and forced.json()["ok"] is True
    bulk = await call(
        "/api/v1/bulk/reassign", {"to_agent": "ghost", "session_ids": ["s-ra-api1", "s-ra-api2"]}
    )
    assert bulk.json()["done"] == 0 and bulk.json()["refused"] == 2
    assert (await index.get_session("s-ra-api2")).claim_agent is None


async def test_a_reassigned_escalation_stays_queued_until_the_agent_takes_it_up(
    make_coord, index, atomic, supervisor
):
    coord = make_coord("s-ra-esc")
    await atomic.claim_handoff("s-ra-esc", "billing_specialist")
    await coord.escalate("angry customer")
    await index.heartbeat("tech_specialist")
    client = await _signed_in(supervisor)
    page = await _post(client, "reassign", "s-ra-esc", to_agent="tech_specialist")
    assert "The escalation stays in the queue until the agent takes the session up." in page
    summary = await index.get_session("s-ra-esc")
    assert summary.status == "escalated" and summary.claim_agent == "tech_specialist"
    assert "s-ra-esc" in [s.session_id for s in await index.escalation_queue()]

    await atomic.renew_handoff("s-ra-esc", "tech_specialist")  # the agent takes it up
    summary = await index.get_session("s-ra-esc")
    assert summary.status == "active" and summary.escalated_at is None
    assert "s-ra-esc" not in [s.session_id for s in await index.escalation_queue()]
    claimed = [e for e in await coord.events() if e.type is EventType.HANDOFF_CLAIMED][-1]
    assert claimed.data["agent_id"] == "tech_specialist" and claimed.data["reassigned"] is True
    await atomic.renew_handoff("s-ra-esc", "tech_specialist")  # later renewals publish nothing
    assert [e.type for e in await coord.events()].count(EventType.HANDOFF_CLAIMED) == 2


async def test_a_forced_reassignment_to_an_absent_agent_leaves_the_escalation_queued(
    make_coord, index, atomic, supervisor
):
    coord = make_coord("s-ra-ghost")
    await coord.escalate("needs a manager")
    client = await _signed_in(supervisor)
    await _post(client, "reassign", "s-ra-ghost", to_agent_typed="ghost_bot", force="on")
    # the agent never comes: its claim ends, and the session is still in the queue
    await atomic.release_handoff("s-ra-ghost", "ghost_bot")
    assert "s-ra-ghost" in [s.session_id for s in await index.escalation_queue()]
    assert (await index.get_session("s-ra-ghost")).status == "escalated"


# -- the pickup queue: nothing stays waiting unnoticed ------------------------------------------


async def test_waiting_sessions_are_listed_oldest_first_with_their_sla(
    make_coord, atomic, supervisor, settings
):
    settings.COORDINATION_PICKUP_SLA = 0  # every waiting session is over its SLA at once
    # named so that the newer sorts first by name: only the waiting time orders them right
    for sid in ("s-wait-old", "s-wait-a-new"):
        await atomic.claim_handoff(sid, "billing_specialist")
        await make_coord(sid).publish(EventType.MESSAGE, {"role": "customer", "text": "<i>x</i>"})
    await atomic.release_handoff("s-wait-old", "billing_specialist", by="human:sup")
    first = (await make_coord("s-wait-old").events(newest_first=True, limit=1))[0]
    # the index orders by the millisecond: wait for the clock to pass the first release
    await eventually(lambda: time.time() > first.timestamp + 0.002, "the clock to move on")
    await atomic.release_handoff("s-wait-a-new", "billing_specialist", by="human:sup")
    client = await _signed_in(supervisor)
    page = (await client.get("/")).content.decode()
    panel = page[page.index('id="pickup-queue"') :]
    panel = panel[: panel.index("</section>")]
    assert "Waiting for pickup" in page and '<span class="badge">2</span>' in panel
    assert panel.index("s-wait-old") < panel.index("s-wait-a-new")  # oldest first
    assert 'data-pickup-overdue="s-wait-old ' in panel and "over-sla" in panel

    settings.METRICS_TOKEN = "scrape-token-123"
    scrape = await AsyncClient().get(
        "/metrics", headers={"Authorization": "Bearer scrape-token-123"}
    )
    metrics = scrape.content.decode()
    assert "coordinator_sessions_waiting_pickup 2.0" in metrics
    assert "coordinator_pickup_oldest_wait_seconds" in metrics


async def test_the_demo_picks_up_a_session_a_supervisor_released(paced_fleet, supervisor):
    fleet = paced_fleet
    sid = "demo-pickup1"
    coord = fleet.coordinator(sid, source="triage")
    await coord.update_state({"customer_query": "a quote please", "category": "sales"}, by="t")
    ready = await coord.publish(
        EventType.HANDOFF_READY, {"from_agent": "triage", "to_agent": "sales_specialist"}
    )
    claimed = await _wait_for(coord, EventType.HANDOFF_CLAIMED, after=ready.id)
    client = await _signed_in(supervisor)
    page = await _post(client, "release", sid, expected_owner=claimed.data["agent_id"])
    assert "Released" in page
    released = await _wait_for(coord, EventType.HANDOFF_RELEASED, after=claimed.id)
    again = await _wait_for(coord, EventType.HANDOFF_CLAIMED, after=released.id)
    assert again.data["agent_id"] == "sales_specialist"


async def test_the_demo_picks_up_a_handoff_nobody_claimed(fleet):
    sid = "demo-pickup2"
    coord = fleet.coordinator(sid, source="triage")
    await coord.update_state({"customer_query": "my invoice", "category": "billing"}, by="t")
    # a handoff to an agent that is not running: the session would wait for good
    ready = await coord.publish(
        EventType.HANDOFF_READY, {"from_agent": "triage", "to_agent": "retired_agent"}
    )
    claimed = await _wait_for(coord, EventType.HANDOFF_CLAIMED, after=ready.id)
    assert claimed.data["agent_id"] == "billing_specialist"


async def test_a_supervisors_reassignment_settles_the_escalation_for_the_agent(make_coord, atomic):
    coord = make_coord("s-ctx-reassign")
    await coord.escalate("angry customer")
    context = await read_human_context(coord)
    assert context.resolved == set()  # nobody has dealt with it yet
    await atomic.reassign_handoff("s-ctx-reassign", "tech_specialist", by="human:sup")
    context = await read_human_context(coord)
    assert context.resolved == {"angry customer"} and not context.handed_back
    # an agent's own reassignment settles nothing
    await coord.escalate("refund over the limit")
    await atomic.reassign_handoff("s-ctx-reassign", "billing_specialist", by="tech_specialist")
    assert (await read_human_context(coord)).resolved == {"angry customer"}


async def test_a_takeover_ends_the_wait_for_the_reassigned_agent(make_coord, index, atomic):
    coord = make_coord("s-ra-takeover")
    await coord.escalate("angry customer")
    await atomic.reassign_handoff("s-ra-takeover", "tech_specialist", by="human:sup")
    await coord.take_over("human:ann")  # a human took it before the agent came
    assert "s-ra-takeover" not in [s.session_id for s in await index.escalation_queue()]
    await coord.hand_back("tech_specialist", by="human:ann")
    await atomic.renew_handoff("s-ra-takeover", "tech_specialist")
    types = [e.type for e in await coord.events()]
    assert EventType.HANDOFF_CLAIMED not in types  # nothing left to acknowledge
    # a new escalation is queued again and is not settled by a renewal either
    await coord.escalate("still angry")
    await atomic.renew_handoff("s-ra-takeover", "tech_specialist")
    assert "s-ra-takeover" in [s.session_id for s in await index.escalation_queue()]


async def test_a_long_session_still_shows_the_agent_its_latest_takeover(make_coord, monkeypatch):
    from coordination.integrations import human_context

    monkeypatch.setattr(human_context, "MAX_EVENTS", 12)  # the window, made small
    monkeypatch.setattr(human_context, "PAGE", 5)
    coord = make_coord("s-ctx-long")
    for n in range(30):  # more history than the window holds
        await coord.publish(EventType.MESSAGE, {"role": "customer", "text": f"line {n}"})
    await coord.escalate("refund over the limit")
    await coord.take_over("human:sup")
    await coord.publish(EventType.MESSAGE, {"role": "human", "from": "human:sup", "text": "done"})
    await coord.hand_back(by="human:sup", resolution="refund approved")
    context = await read_human_context(coord)
    assert context.resolution == "refund approved"
    assert context.replies == [("human:sup", "done")]
    assert context.resolved == {"refund over the limit"}
