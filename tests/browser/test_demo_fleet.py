"""With the demo fleet running, the dashboard shows live sessions and escalations, and a
supervisor's takeover stops the fleet in that session."""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import expect

from coordination import EventType
from coordination.devtools.demo import FleetSettings

from ..waiting import wait_until

pytestmark = pytest.mark.browser


@pytest.fixture
def fleet(start_fleet):
    settings = FleetSettings(
        sessions=4,
        rate=300,
        pace=0.4,
        turns=(6, 8),
        escalation_chance=0.6,
        prefix=f"demo{uuid.uuid4().hex[:6]}",
        seed=7,
    )
    return start_fleet(settings)


def test_overview_is_live_and_takeover_stops_the_fleet(asgi_server, page_factory, fleet, core):
    page = page_factory(asgi_server.url)
    page.goto(f"{asgi_server.url}/")
    expect(page.locator("[data-live-indicator]")).to_have_attribute("data-state", "connected")
    expect(page.locator("#escalation-queue")).to_contain_text(fleet.settings.prefix, timeout=30_000)
    expect(page.locator("#agents-online")).to_contain_text("billing_specialist")

    page.get_by_role("button", name="Take over the longest waiting").click()
    expect(page.locator("#session-summary")).to_contain_text("human:alice")

    # Now sessions an agent is working on right now: take one over from its page. An agent
    # may finish (escalate) between our pick and the click; then pick another one.
    outcomes = []
    for _ in range(10):
        wait_until(
            lambda: any(not t.done() for t in list(fleet.workers.values())), "a running agent"
        )
        session_id = next(k.split("|")[0] for k, t in list(fleet.workers.items()) if not t.done())
        page.goto(f"{asgi_server.url}/sessions/{session_id}/")
        expect(page.locator("#session-actions")).to_be_visible()
        if page.get_by_role("button", name="Take over").count() == 0:
            continue  # the agent closed the session between our pick and the page load
        page.get_by_role("button", name="Take over").click()
        result = page.locator("#action-result")
        expect(result).not_to_be_empty()
        if result.inner_text().strip() == "The session is closed.":
            continue  # the agent closed it between the page load and the click
        expect(result).to_have_text("You now control this session.")
        wait_until(
            lambda sid=session_id: fleet.outcomes.get(sid) is not None, "the session's outcome"
        )
        outcomes.append(fleet.outcomes[session_id])
        events = core.run(session_id, lambda c: c.events(limit=1000))
        takeover = max(i for i, e in enumerate(events) if e.type is EventType.HUMAN_TAKEOVER)
        assert [
            e for e in events[takeover + 1 :] if e.source and not e.source.startswith("human:")
        ] == []
        if outcomes[-1] == "taken over":
            break
    assert outcomes and outcomes[-1] == "taken over", outcomes
