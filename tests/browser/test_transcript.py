"""Take over → reply → hand back with a resolution, in Chromium against the real demo agents:
the transcript shows the customer's, the agent's and the human's turns live, and the agent's
next model input holds the human's reply and resolution; it does not escalate again."""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import expect

from coordination import AgentCoordinator, EventType
from coordination.devtools.demo import Fleet, FleetSettings

pytestmark = pytest.mark.browser


@pytest.fixture
def fleet(start_fleet):
    """The demo desk starting no sessions itself: it works the one the test starts."""
    settings = FleetSettings(
        sessions=0,
        pace=0.3,
        turns=(3, 3),
        escalation_chance=0,
        prefix=f"tr{uuid.uuid4().hex[:6]}",
        seed=3,
    )
    return start_fleet(settings)


async def triage(fleet: Fleet, sid: str) -> None:
    """What triage does, with the hint that makes the billing specialist escalate."""
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


async def hand_off(fleet: Fleet, sid: str) -> None:
    await fleet.coordinator(sid, source="triage").publish(
        EventType.HANDOFF_READY, {"from_agent": "triage", "to_agent": "billing_specialist"}
    )


def test_take_over_reply_hand_back_the_agent_continues_from_the_reply(
    asgi_server, page_factory, fleet, core, redis_url, browser_namespace
):
    sid = f"{fleet.settings.prefix}-1"
    core.call(lambda: triage(fleet, sid))
    page = page_factory(asgi_server.url)
    page.goto(f"{asgi_server.url}/sessions/{sid}/")
    expect(page.locator("[data-live-indicator]")).to_have_attribute("data-state", "connected")
    core.call(lambda: hand_off(fleet, sid))

    transcript = page.locator("#session-transcript")
    # live, without a reload: the customer's turn, the agent's, then the escalation above them
    expect(transcript.locator('[data-role="customer"]')).to_contain_text("refund of $2,400")
    expect(transcript.locator('[data-role="agent"]').first).to_be_visible(timeout=20_000)
    expect(transcript).to_contain_text("Escalated: refund over the limit", timeout=20_000)

    page.get_by_role("button", name="Take over").click()
    expect(transcript).to_contain_text("alice controls this session")
    page.get_by_label("Reply to the customer").fill("Your refund of $2,400 is approved.")
    page.get_by_role("button", name="Send reply").click()
    expect(transcript.locator('[data-role="human"]')).to_contain_text(
        "Your refund of $2,400 is approved."
    )
    calls_before = len(fleet.model.calls)
    page.get_by_label("Hand back to").select_option("")
    page.get_by_label("Resolution for the agent").fill("refund approved")
    page.get_by_role("button", name="Hand back").click()
    expect(page.locator("#action-result")).to_contain_text("resolution: refund approved")

    # the agent picks the session up again, answers its turns and resolves it
    expect(transcript).to_contain_text("Session closed: resolved", timeout=30_000)
    expect(transcript).to_contain_text("Resolution: refund approved")

    async def events_after_handback():
        coord = AgentCoordinator(sid, redis_url, namespace=browser_namespace)
        events = await coord.events(limit=1000)
        handback = max(i for i, e in enumerate(events) if e.type is EventType.HUMAN_HANDBACK)
        return events[handback + 1 :]

    after = core.call(events_after_handback)
    assert EventType.ESCALATED not in [e.type for e in after]
    asked = [text for _, text in fleet.model.calls[calls_before:]]
    assert asked and "Your refund of $2,400 is approved." in asked[0]
    assert "refund approved" in asked[0]
    # the agent's turns after the hand-back are in the transcript too
    expect(transcript.locator('[data-role="agent"]')).to_have_count(4)  # 1 + 3 turns

    # the raw timeline is one click away, and filters by event type
    page.get_by_role("link", name="raw event timeline ↓").click()
    page.get_by_label("Show events of type").select_option("escalated")
    expect(page.locator("#timeline > li.event:visible")).to_have_count(1)
    expect(page.locator("#timeline > li.event.type-message").first).to_be_hidden()
    page.get_by_label("Show events of type").select_option("")
    expect(page.locator("#timeline > li.event.type-message").first).to_be_visible()
