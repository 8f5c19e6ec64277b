"""Supervisors acting in a real browser: take over, reply, hand back; races; viewers; admin."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from coordination import EventType

from .conftest import LiveServer, wait_live

pytestmark = pytest.mark.browser


def test_take_over_reply_and_hand_back(asgi_server, page_factory, core, sid):
    core.run(sid, lambda c: c.escalate("refund over the limit"))
    page = page_factory(asgi_server.url)
    page.goto(f"{asgi_server.url}/")
    expect(page.locator("#escalation-queue")).to_contain_text(sid)
    page.goto(f"{asgi_server.url}/sessions/{sid}/")
    wait_live(page)
    page.get_by_role("button", name="Take over").click()
    expect(page.locator("#action-result")).to_have_text("You now control this session.")
    expect(page.locator("#session-summary")).to_contain_text("human:alice")
    expect(page.locator("#timeline .event").first).to_contain_text("human_takeover")

    page.get_by_label("Reply to the customer").fill("Hi, I am Alice and I will sort this out.")
    page.get_by_role("button", name="Send reply").click()
    expect(page.locator("#action-result")).to_have_text("Reply sent.")
    expect(page.locator("#timeline .event").first).to_contain_text("I will sort this out")

    page.get_by_label("Hand back to").select_option("")
    page.get_by_role("button", name="Hand back").click()
    expect(page.locator("#action-result")).to_have_text("Handed back to the queue.")
    expect(page.locator("#session-summary")).to_contain_text("waiting")
    expect(page.locator("#session-audit")).to_contain_text("Hand back")
    types = [e.type for e in core.run(sid, lambda c: c.events())]
    assert types[-3:] == [EventType.HUMAN_TAKEOVER, EventType.MESSAGE, EventType.HUMAN_HANDBACK]


def test_two_supervisors_race_and_exactly_one_wins(asgi_server, page_factory, core, sid):
    core.run(sid, lambda c: c.escalate("angry"))
    alice = page_factory(asgi_server.url, "alice")
    bob = page_factory(asgi_server.url, "bob")
    for page in (alice, bob):
        page.goto(f"{asgi_server.url}/sessions/{sid}/")
        wait_live(page)
    # Both pages were drawn before either acted. Each submits its own Take over form (its
    # cookie, its CSRF token) without waiting, so the two requests are in flight together.
    start = """() => {
        const form = document.querySelector('form[action*="/act/take-over/"]');
        window.__race = fetch(form.action, {method: 'POST', body: new FormData(form),
                                            headers: {'HX-Request': 'true'}}).then(r => r.text());
    }"""
    alice.evaluate(start)
    bob.evaluate(start)
    responses = [page.evaluate("() => window.__race") for page in (alice, bob)]
    texts = [re.search(r'id="action-result"[^>]*>([^<]*)<', r).group(1) for r in responses]
    winners = [t for t in texts if t == "You now control this session."]
    losers = [t for t in texts if t.startswith("Taken over by ")]
    assert len(winners) == 1 and len(losers) == 1, texts
    controller = core.run(sid, lambda c: c.controller())
    assert f"Taken over by {controller.removeprefix('human:')}" in losers[0]


def test_viewer_sees_no_buttons(asgi_server, page_factory, core, sid):
    core.run(sid, lambda c: c.escalate("x"))
    page = page_factory(asgi_server.url, "victor")
    page.goto(f"{asgi_server.url}/sessions/{sid}/")
    expect(page.locator("#session-actions")).to_contain_text("needs the supervisors role")
    expect(page.get_by_role("button", name="Take over")).to_have_count(0)
    page.goto(f"{asgi_server.url}/")
    expect(page.get_by_role("button", name="Take over the longest waiting")).to_have_count(0)


def test_admin_state_edit_shows_up_live_and_stale_edit_is_refused(
    asgi_server, page_factory, core, sid
):
    core.run(sid, lambda c: c.set_state("plan", "A"))
    watcher = page_factory(asgi_server.url, "bob")
    watcher.goto(f"{asgi_server.url}/sessions/{sid}/")
    wait_live(watcher)

    admin = page_factory(asgi_server.url, "alice")
    admin.goto(f"{asgi_server.url}/admin/coordination/sessions/{sid}/state/")
    admin.locator("textarea[name=state-0-value]").fill('{"steps": ["refund", "apologise"]}')
    admin.get_by_role("button", name="Save").click()
    expect(admin.locator(".messagelist")).to_contain_text("Saved 1 change(s)")
    expect(watcher.locator("#session-state")).to_contain_text("apologise")

    # The admin page is now stale: an agent changes the key before the next save.
    core.run(sid, lambda c: c.set_state("plan", "agent-wins"))
    admin.locator("textarea[name=state-0-value]").fill('"human-wins"')
    admin.get_by_role("button", name="Save").click()
    expect(admin.locator(".errorlist")).to_contain_text("Changed by someone else")
    assert core.run(sid, lambda c: c.get_state("plan")) == "agent-wins"


def test_bulk_release_with_ticks_kept_across_live_updates(asgi_server, page_factory, core, sid):
    ids = [f"{sid}-{n}" for n in range(3)]
    for session_id in ids:
        core.publish(session_id, EventType.HANDOFF_READY)
        assert core.claim(session_id, "billing")
    page = page_factory(asgi_server.url)
    page.goto(f"{asgi_server.url}/sessions/?q={sid}")
    wait_live(page)
    rows = page.locator("#session-rows tr")
    expect(rows).to_have_count(3)
    page.get_by_label(f"Select {ids[0]}").check()
    page.get_by_label(f"Select {ids[1]}").check()
    expect(page.locator("#bulk-count")).to_have_text("2 selected")
    # an agent's event redraws the first row live: its tick must survive the redraw
    core.publish(ids[0], EventType.MESSAGE, {"text": "still here"})
    expect(page.locator(f"#session-rows tr[data-session-id='{ids[0]}']")).to_contain_text("message")
    expect(page.get_by_label(f"Select {ids[0]}")).to_be_checked()
    expect(page.get_by_label(f"Select {ids[2]}")).not_to_be_checked()

    page.get_by_label("With the selected sessions").select_option("release")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#bulk-results")).to_contain_text("Release claims: 2 of 2 done.")
    expect(page.locator("#bulk-results tbody tr")).to_have_count(2)
    expect(page.locator("#bulk-count")).to_have_text("None selected")
    for session_id in ids[:2]:
        row = page.locator(f"#session-rows tr[data-session-id='{session_id}']")
        expect(row).to_contain_text("nobody")  # redrawn live after the release
    expect(page.locator(f"#session-rows tr[data-session-id='{ids[2]}']")).to_contain_text("billing")


def test_intervention_on_one_server_is_seen_live_on_another(
    asgi_server, server_env, page_factory, core, sid
):
    core.run(sid, lambda c: c.escalate("needs a human"))
    other = LiveServer(server_env).start()  # a second ASGI process on the same Redis and DB
    try:
        watcher = page_factory(asgi_server.url, "alice")
        watcher.goto(f"{asgi_server.url}/sessions/{sid}/")
        wait_live(watcher)
        listing = page_factory(asgi_server.url, "alice")
        listing.goto(f"{asgi_server.url}/sessions/?q={sid}")
        wait_live(listing)

        actor = page_factory(other.url, "bob")
        actor.goto(f"{other.url}/sessions/{sid}/")
        actor.get_by_role("button", name="Take over").click()
        expect(actor.locator("#action-result")).to_have_text("You now control this session.")

        expect(watcher.locator("#session-summary")).to_contain_text("human:bob")
        expect(watcher.locator("#timeline .event").first).to_contain_text("human_takeover")
        expect(watcher.locator("#session-audit")).to_contain_text("Take over")
        row = listing.locator(f'#session-rows tr[data-session-id="{sid}"]')
        expect(row).to_contain_text("human:bob")
    finally:
        other.stop()
