"""The Agents SDK integration and the demo fleet, with the offline scripted model."""

from __future__ import annotations

import asyncio

import pytest
from agents import Agent, set_tracing_disabled

from coordination import EventType, SessionTakenOver
from coordination.devtools.demo import Fleet, FleetSettings
from coordination.devtools.scripted_model import ScriptedModel
from coordination.integrations.openai_agents import run_guarded

set_tracing_disabled(True)


@pytest.fixture
def fleet(redis_url, namespace):
    return Fleet(
        redis_url,
        namespace,
        FleetSettings(pace=0, turns=(3, 3), escalation_chance=0, seed=1),
        offline=True,
    )


async def test_a_run_publishes_started_and_completed(make):
    coord = make.coordinator("s-run")
    agent = Agent(
        name="billing_specialist",
        instructions="billing",
        model=ScriptedModel(lambda i, t: "Refunded."),
    )
    result = await run_guarded(agent, "refund please", coordinator=coord)
    assert result.final_output == "Refunded."
    events = await coord.events()
    assert [(e.type, e.source) for e in events] == [
        (EventType.AGENT_STARTED, "billing_specialist"),
        (EventType.AGENT_COMPLETED, "billing_specialist"),
    ]
    assert events[1].data == {"agent_id": "billing_specialist", "output": "Refunded."}


async def test_guard_refuses_to_run_while_a_human_controls(make):
    coord = make.coordinator("s-guard")
    await coord.take_over("human:ann")
    agent = Agent(name="bot", instructions="x", model=ScriptedModel())
    with pytest.raises(SessionTakenOver):
        await run_guarded(agent, "hello", coordinator=coord)
    assert [e.type for e in await coord.events()] == [EventType.HUMAN_TAKEOVER]


async def test_triage_hands_off_to_the_right_specialist(fleet, make):
    target = await fleet.triage("demo-t1")
    coord = make.coordinator("demo-t1")
    query = await coord.get_state("customer_query")
    expected = {
        "billing": "billing_specialist",
        "technical": "tech_specialist",
        "sales": "sales_specialist",
    }
    assert target == expected[await coord.get_state("category")]
    last = (await coord.events())[-1]
    assert (
        last.type is EventType.HANDOFF_READY
        and last.data["to_agent"] == target
        and last.data["query"] == query
    )


async def test_takeover_mid_run_stops_the_agent_before_its_next_turn(fleet, make):
    coord = make.coordinator("demo-take")
    await coord.update_state({"customer_query": "refund please", "category": "billing"})
    turns = []

    def reply(instructions, text):
        turns.append(text)
        if len(turns) == 1:  # a supervisor takes over while the first turn is running
            asyncio.get_running_loop().create_task(
                make.coordinator("demo-take").take_over("human:ann")
            )
        return "Working on it."

    fleet.specialists["billing_specialist"].model = ScriptedModel(reply)
    outcome = await fleet.specialist("demo-take", "billing_specialist", claim=True)
    assert outcome == "taken over" and len(turns) == 1
    events = await coord.events()
    takeover = next(i for i, e in enumerate(events) if e.type is EventType.HUMAN_TAKEOVER)
    assert all(e.source in (None, "human:ann") for e in events[takeover + 1 :])

    await coord.hand_back("billing_specialist", by="human:ann")  # hand back resumes it
    fleet.specialists["billing_specialist"].model = ScriptedModel(lambda i, t: "All sorted.")
    assert await fleet.specialist("demo-take", "billing_specialist", claim=False) == "resolved"
    assert (await make.index().get_session("demo-take")).status == "closed"


async def test_reassign_makes_the_new_agent_pick_the_session_up(fleet, make):
    coord = make.coordinator("demo-re")
    await coord.update_state({"customer_query": "my app crashes", "category": "technical"})
    follower = asyncio.create_task(fleet._follow_feed(await make.index().latest_feed_id()))
    try:
        await make.atomic().reassign_handoff("demo-re", "tech_specialist", by="human:ann")
        async for event in coord.subscribe(timeout=10, types=[EventType.MESSAGE]):
            if event.source == "tech_specialist":
                break
        else:
            pytest.fail("the reassigned agent never answered")
    finally:
        follower.cancel()
        for task in [follower, *fleet.workers.values()]:
            task.cancel()
        await asyncio.gather(follower, *fleet.workers.values(), return_exceptions=True)


async def test_fleet_runs_sessions_end_to_end(redis_url, namespace, make):
    fleet = Fleet(
        redis_url,
        namespace,
        FleetSettings(sessions=3, rate=600, duration=4, pace=0.05, seed=3),
        offline=True,
    )
    await fleet.run()
    index = make.index()
    counts = await index.counts_by_status()
    assert sum(counts.values()) >= 3
    assert counts["closed"] + counts["escalated"] >= 1
    names = {a.agent_id for a in await index.agents()}
    assert {"triage", "billing_specialist", "tech_specialist", "sales_specialist"} <= names
