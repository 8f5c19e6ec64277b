"""Tool-call approvals in Chromium: an agent's request shows up live on the overview and on
every open page of its session; a supervisor's click resumes the agent waiting in
``wait_for_decision``; other pages see the decision live; viewers get no buttons."""

from __future__ import annotations

import asyncio
import re

import pytest
import redis.asyncio as aioredis
from playwright.sync_api import expect

from coordination import AgentCoordinator

from .conftest import wait_for_js, wait_live

pytestmark = pytest.mark.browser


def agent_waits(core, redis_server_url, browser_namespace, sid, approval_id):
    """The agent side: ``wait_for_decision`` running in the agent loop (a future to await)."""

    async def go():
        client = aioredis.Redis.from_url(redis_server_url, decode_responses=True)
        try:
            coord = AgentCoordinator(sid, client=client, namespace=browser_namespace)
            return await coord.wait_for_decision(approval_id, timeout=60)
        finally:
            await client.aclose()

    return asyncio.run_coroutine_threadsafe(go(), core.loop)


def request(core, sid, **kw):
    return core.run(
        sid,
        lambda c: c.request_approval(
            kw.get("action", "refund"),
            kw.get("args", {"order": "A-7", "amount": 250, "note": "<b>not bold</b>"}),
            reason=kw.get("reason", "over the refund limit"),
            agent_id="billing",
        ),
    )


def test_approval_appears_live_and_a_click_resumes_the_agent(
    asgi_server, page_factory, core, sid, redis_server_url, browser_namespace
):
    url = asgi_server.url
    core.publish(sid)
    overview = page_factory(url, "alice")
    overview.goto(f"{url}/")
    wait_live(overview)
    watcher = page_factory(url, "bob")
    watcher.goto(f"{url}/sessions/{sid}/")
    wait_live(watcher)
    expect(watcher.locator("#session-approvals")).to_contain_text("No approval is waiting")

    approval = request(core, sid)
    row = overview.locator(f'#pending-approvals tr[data-session-id="{sid}"]')
    expect(row).to_contain_text("refund")
    expect(row).to_contain_text("billing")
    expect(row).to_contain_text("<b>not bold</b>")  # escaped: shown as text
    panel = watcher.locator("#session-approvals")
    expect(panel).to_contain_text("over the refund limit")
    expect(panel.locator("pre.approval-args")).to_contain_text('"amount": 250')
    expect(panel.get_by_role("button", name="Approve", exact=True)).to_be_visible()

    waiting = agent_waits(core, redis_server_url, browser_namespace, sid, approval.approval_id)
    supervisor = page_factory(url, "alice")
    supervisor.goto(f"{url}/sessions/{sid}/")
    wait_live(supervisor)
    supervisor.get_by_label("Message to the agent (optional)").fill("go ahead")
    supervisor.get_by_role("button", name="Approve", exact=True).click()
    expect(supervisor.locator("#action-result")).to_have_text("Approved refund.")
    decision = waiting.result(timeout=30)
    assert decision.approved and decision.by == "human:alice" and decision.message == "go ahead"

    # the other supervisor's page and the overview learn it live
    decided = watcher.locator("#session-approvals .approvals-decided")
    expect(decided).to_contain_text("approved")
    expect(decided).to_contain_text("human:alice")
    expect(watcher.get_by_role("button", name="Approve", exact=True)).to_have_count(0)
    expect(row).to_have_count(0)
    expect(supervisor.locator("#session-audit")).to_contain_text("Approve tool call")


def test_reject_with_a_message_and_edited_arguments_that_are_not_json(
    asgi_server, page_factory, core, sid, redis_server_url, browser_namespace
):
    url = asgi_server.url
    first = request(core, sid, action="send_email", args={"to": "a@example.com"})
    page = page_factory(url, "alice")
    page.goto(f"{url}/sessions/{sid}/")
    wait_live(page)
    page.get_by_text("Approve with edited arguments").click()
    args = page.get_by_label("Arguments (JSON)")
    expect(args).to_have_value('{\n  "to": "a@example.com"\n}')
    args.fill('{"to": "b@example.com",')
    page.get_by_role("button", name="Approve with these arguments").click()
    expect(page.locator("#session-approvals")).to_contain_text("Not valid JSON")
    expect(page.get_by_label("Arguments (JSON)")).to_have_value('{"to": "b@example.com",')
    assert core.run(sid, lambda c: c.get_approval(first.approval_id)).pending

    waiting = agent_waits(core, redis_server_url, browser_namespace, sid, first.approval_id)
    page.get_by_label("Message to the agent (optional)").fill("wrong customer")
    page.get_by_role("button", name="Reject").click()
    expect(page.locator("#action-result")).to_have_text("Rejected send_email.")
    decision = waiting.result(timeout=30)
    assert not decision.approved and decision.message == "wrong customer"
    expect(page.locator("#session-approvals .approvals-decided")).to_contain_text("wrong customer")

    second = request(core, sid, action="send_email", args={"to": "c@example.com"})
    expect(page.get_by_label("Arguments (JSON)")).to_have_value('{\n  "to": "c@example.com"\n}')
    page.get_by_text("Approve with edited arguments").click()
    page.get_by_label("Arguments (JSON)").fill('{"to": "d@example.com"}')
    page.get_by_role("button", name="Approve with these arguments").click()
    expect(page.locator("#action-result")).to_have_text(
        "Approved send_email with edited arguments."
    )
    decision = core.run(sid, lambda c: c.wait_for_decision(second.approval_id, timeout=10))
    assert decision.approved and decision.args == {"to": "d@example.com"}


def test_viewer_sees_the_request_and_the_decision_but_no_buttons(
    asgi_server, page_factory, core, sid
):
    url = asgi_server.url
    approval = request(core, sid)
    viewer = page_factory(url, "victor")
    viewer.goto(f"{url}/sessions/{sid}/")
    wait_live(viewer)
    expect(viewer.locator("#session-approvals")).to_contain_text("over the refund limit")
    expect(viewer.locator("#session-approvals button")).to_have_count(0)
    # a forged POST from the viewer's page (its own cookie and CSRF token) is refused
    answer = viewer.evaluate(
        """async ([sid, aid]) => {
            const token = document.querySelector('[name=csrfmiddlewaretoken]')
                || {value: document.cookie.replace(/.*csrftoken=([^;]*).*/, '$1')};
            const body = new URLSearchParams({approval_id: aid, decision: 'approve',
                                              csrfmiddlewaretoken: token.value});
            const r = await fetch('/act/decide/' + encodeURIComponent(sid) + '/',
                                  {method: 'POST', body});
            return [r.status, await r.text()];
        }""",
        [sid, approval.approval_id],
    )
    assert answer[0] == 403 and "supervisors role" in answer[1]  # the role, not CSRF
    assert core.run(sid, lambda c: c.get_approval(approval.approval_id)).pending
    core.run(sid, lambda c: c.decide(approval.approval_id, False, by="human:bob", message="no"))
    expect(viewer.locator("#session-approvals .approvals-decided")).to_contain_text("rejected")


def test_opted_in_supervisor_is_alerted_of_a_new_approval(asgi_server, page_factory, core, sid):
    from .test_escalations import RECORD_NOTIFICATIONS

    url = asgi_server.url
    request(core, f"{sid}-old")  # already waiting when the page loads: no alert for it
    page = page_factory(url, permissions=["notifications"])
    page.context.add_init_script(RECORD_NOTIFICATIONS)
    page.goto(f"{url}/")
    wait_live(page)
    page.locator("[data-alerts-toggle]").click()
    expect(page.locator("[data-alerts-toggle]")).to_have_attribute("aria-pressed", "true")
    request(core, sid)
    wait_for_js(page, f"window.__notified.some(n => n[1] === {sid!r})", "the notification")
    assert page.evaluate("window.__notified") == [["Approval requested", sid]]
    assert page.evaluate("window.coordinator.alertLog") == [
        {"title": "Approval requested", "session": sid}
    ]


def test_typing_survives_live_updates_of_the_session(asgi_server, page_factory, core, sid):
    url = asgi_server.url
    first = request(core, sid, action="send_email", args={"to": "a@example.com"})
    page = page_factory(url, "alice")
    page.goto(f"{url}/sessions/{sid}/")
    wait_live(page)
    card = page.locator(f'article[data-approval-id="{first.approval_id}"]')
    card.get_by_text("Approve with edited arguments").click()
    card.get_by_label("Arguments (JSON)").fill('{"to": "typed@example.com"}')
    card.get_by_label("Message to the agent (optional)").fill("typed message")
    # a state change redraws the header but not the approvals: the open editor stays open
    core.run(sid, lambda c: c.set_state("step", 2))
    expect(page.locator("#session-state")).to_contain_text("step")
    expect(card.get_by_label("Arguments (JSON)")).to_be_visible()
    # a second request redraws the panel: what was typed in the first is kept
    second = request(core, sid, action="refund")
    expect(page.locator(f'article[data-approval-id="{second.approval_id}"]')).to_be_visible()
    expect(card.get_by_label("Arguments (JSON)")).to_have_value('{"to": "typed@example.com"}')
    expect(card.get_by_label("Message to the agent (optional)")).to_have_value("typed message")
    card.get_by_text("Approve with edited arguments").click()
    card.get_by_role("button", name="Approve with these arguments").click()
    expect(page.locator("#action-result")).to_have_text(
        "Approved send_email with edited arguments."
    )
    decision = core.run(sid, lambda c: c.wait_for_decision(first.approval_id, timeout=10))
    assert decision.args == {"to": "typed@example.com"} and decision.message == "typed message"


@pytest.fixture(scope="module")
def fast_approval_sla_server(server_env):
    from .conftest import LiveServer

    server = LiveServer({**server_env, "COORDINATION_APPROVAL_SLA": "60"}).start()
    yield server
    server.stop()


def test_an_approval_lights_up_when_its_sla_passes(
    fast_approval_sla_server, page_factory, core, sid
):
    url = fast_approval_sla_server.url
    page = page_factory(url)
    page.clock.install()  # the page's clock: moved past the SLA by the test, not by waiting
    page.goto(f"{url}/")
    wait_live(page)
    request(core, sid)
    row = page.locator(f'#pending-approvals tr[data-session-id="{sid}"]')
    expect(row).to_contain_text("SLA 60s")
    tag = row.locator("[data-sla-deadline]")
    expect(tag).to_be_hidden()
    page.clock.fast_forward("01:05")
    expect(tag).to_be_visible()
    expect(row).to_have_class("over-sla")


def test_two_supervisors_click_at_once_and_one_decision_is_made(
    asgi_server, page_factory, core, sid
):
    url = asgi_server.url
    approval = request(core, sid)
    alice = page_factory(url, "alice")
    bob = page_factory(url, "bob")
    for page in (alice, bob):
        page.goto(f"{url}/sessions/{sid}/")
        wait_live(page)
    # Both pages were drawn before either decided; each posts its own form (its cookie, its
    # CSRF token) without waiting, so the two decisions are in flight together.
    # Both forms are read before either is sent: once the first decision is made, the live
    # push redraws the other page's panel without its form (seen: FormData(null) under load).
    prepare = """(decision) => {
        const form = document.querySelector('form.approval-form');
        window.__body = new FormData(form);
        window.__body.set('decision', decision);
        window.__action = form.action;
    }"""
    send = """() => {
        window.__race = fetch(window.__action, {method: 'POST', body: window.__body,
                                                headers: {'HX-Request': 'true'}}).then(r => r.text());
    }"""
    alice.evaluate(prepare, "approve")
    bob.evaluate(prepare, "reject")
    alice.evaluate(send)
    bob.evaluate(send)
    responses = [page.evaluate("() => window.__race") for page in (alice, bob)]
    texts = [re.search(r'id="action-result"[^>]*>([^<]*)<', r).group(1) for r in responses]
    done = [t for t in texts if t in ("Approved refund.", "Rejected refund.")]
    refused = [t for t in texts if t.startswith("Already ")]
    assert len(done) == 1 and len(refused) == 1, texts
    record = core.run(sid, lambda c: c.get_approval(approval.approval_id))
    verb = "approved" if record.status == "approved" else "rejected"
    assert refused[0].startswith(f"Already {verb} by {record.decided_by.removeprefix('human:')}")
    for page in (alice, bob):  # and both pages show the one decision, live
        expect(page.locator("#session-approvals .approvals-decided")).to_contain_text(verb)
