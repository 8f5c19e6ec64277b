"""The supervisor's loop with the real demo fleet, as a new user meets it after ``make run``:
the fleet's billing specialist asks to refund over the limit, the overview lists the request
within a bounded time, a supervisor approves or rejects it on the session page, and the
agent carries on from the decision. The fleet checks the dashboard's signature on each
decision, as it does under ``manage.py serve`` (COORDINATION_DECISION_KEY)."""

from __future__ import annotations

import time
import uuid

import pytest
from django.conf import settings as django_settings
from playwright.sync_api import expect

from coordination import EventType
from coordination.core import DecisionSigner
from coordination.core.signing import DECISION_KEY_ENV
from coordination.devtools.demo import FleetSettings

from ..waiting import wait_until
from .conftest import wait_live

pytestmark = pytest.mark.browser


@pytest.fixture
def fleet(start_fleet, browser_namespace, monkeypatch, sid):
    """The demo desk, dealing a new session every second (a refund over the limit is two of
    every ten), checking decisions with the test server's public key. ``sid`` first: it
    clears what earlier tests left in the overview's queues."""
    key = DecisionSigner.from_secret(django_settings.SECRET_KEY, browser_namespace).public_key
    monkeypatch.setenv(DECISION_KEY_ENV, key)
    settings = FleetSettings(
        sessions=2,
        rate=60,
        pace=0.3,
        turns=(2, 3),
        escalation_chance=0,
        prefix=f"ap{uuid.uuid4().hex[:6]}",
        seed=11,
    )
    return start_fleet(settings)


def refund_requests(page, prefix: str, count: int, timeout: float = 45.0) -> list[str]:
    """The sessions of the first ``count`` refund requests the overview lists."""
    rows = page.locator(f'#pending-approvals tr[data-session-id^="{prefix}-"]')
    expect(rows.nth(count - 1)).to_be_visible(timeout=timeout * 1000)
    found = [rows.nth(i).get_attribute("data-session-id") for i in range(count)]
    for i in range(count):
        expect(rows.nth(i)).to_contain_text("refund")
        expect(rows.nth(i)).to_contain_text("billing_specialist")
    return found


def test_the_fleet_asks_and_acts_on_the_supervisors_decision(
    asgi_server, page_factory, fleet, core
):
    url, prefix = asgi_server.url, fleet.settings.prefix
    overview = page_factory(url, "alice")
    overview.goto(f"{url}/")
    wait_live(overview)
    started = time.monotonic()
    approve_sid, reject_sid = refund_requests(overview, prefix, 2)
    assert time.monotonic() - started < 45  # a new user sees one well within a minute
    orders = {
        s: core.run(s, lambda c: c.get_state("refund_request"))["order_id"]
        for s in (approve_sid, reject_sid)
    }
    # both runs are paused: neither refund was made (small refunds of other sessions were)
    assert not set(orders.values()) & {order for order, _ in fleet.refunds}

    # Approve: from the overview's link to the session page, then the panel's button
    overview.locator(f'#pending-approvals tr[data-session-id="{approve_sid}"] a').first.click()
    overview.wait_for_url(f"**/sessions/{approve_sid}/")
    page = overview
    wait_live(page)
    panel = page.locator("#session-approvals")
    expect(panel.locator("pre.approval-args")).to_contain_text(orders[approve_sid])
    page.get_by_role("button", name="Approve", exact=True).click()
    expect(page.locator("#action-result")).to_have_text("Approved refund.")
    transcript = page.locator("#session-transcript")
    expect(transcript.locator('[data-role="agent"]').first).to_contain_text(
        "Done: Refunded $", timeout=20_000
    )
    # the session goes on: the agent's next turn, then it resolves the session
    expect(transcript).to_contain_text("Session closed: resolved", timeout=30_000)
    assert wait_until(lambda: fleet.outcomes.get(approve_sid), "the agent to finish") == "resolved"
    events = core.run(approve_sid, lambda c: c.events(limit=1000))
    ran = [e for e in events if e.type is EventType.TOOL_RESULT and e.data["tool"] == "refund"]
    assert len(ran) == 1
    assert [order for order, _ in fleet.refunds].count(orders[approve_sid]) == 1
    assert len(_agent_turns(events)) >= 2

    # Reject with a message: the agent tells the customer, with the message
    page.goto(f"{url}/sessions/{reject_sid}/")
    wait_live(page)
    page.get_by_label("Message to the agent (optional)").fill(
        "The tracking shows it was delivered <b>yesterday</b>"
    )
    page.get_by_role("button", name="Reject").click()
    expect(page.locator("#action-result")).to_have_text("Rejected refund.")
    expect(transcript.locator('[data-role="agent"]').first).to_contain_text(
        "I am sorry, I cannot make this refund. Our supervisor says: "
        "The tracking shows it was delivered <b>yesterday</b>",
        timeout=20_000,
    )
    assert wait_until(lambda: fleet.outcomes.get(reject_sid), "the agent to finish") == "resolved"
    events = core.run(reject_sid, lambda c: c.events(limit=1000))
    assert [e for e in events if e.type is EventType.TOOL_RESULT] == []
    assert orders[reject_sid] not in [order for order, _ in fleet.refunds]
    assert core.run(reject_sid, lambda c: c.get_state("refund_status")) == "rejected"


def _agent_turns(events) -> list[str]:
    return [
        e.data["text"]
        for e in events
        if e.type is EventType.MESSAGE and e.data.get("role") == "agent"
    ]
