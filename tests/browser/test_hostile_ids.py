"""Hostile session ids in a real browser: Chromium resolves every URL of a session's page
(WHATWG parsing: dot segments, backslashes, percent escapes) to that same session, and the
buttons of ``zz/../<victim>`` act on ``zz/../<victim>``, never on the victim."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from coordination import EventType, SessionIndex

from ..reliability.test_urls_and_errors import NASTY_IDS, session_of, whatwg_path_is_stable
from .conftest import login, wait_live

pytestmark = pytest.mark.browser

COLLECT = """() => {
    const names = ['href', 'action', 'hx-get', 'hx-post', 'ws-connect'];
    const found = [];
    for (const el of document.querySelectorAll(names.map(n => `[${n}]`).join(','))) {
        for (const name of names) {
            const value = el.getAttribute(name);
            if (value) found.push([name, value, new URL(value, location.href).pathname]);
        }
    }
    return {here: location.pathname, found};
}"""


@pytest.fixture
def supervisor_page(chromium, asgi_server):
    """Alice, accepting the confirmation dialogs (Close, Release) as a supervisor would."""
    context = chromium.new_context()
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    login(page, asgi_server.url, "alice")
    yield page
    context.close()


def test_buttons_of_a_dot_segment_id_act_on_that_session_only(
    asgi_server, supervisor_page, core, sid
):
    victim, attacker = sid, f"zz/../{sid}"
    for session_id, agent in ((victim, "agent-v"), (attacker, "agent-a")):
        core.run(session_id, lambda c: c.escalate("needs a human"))
        assert core.claim(session_id, agent)
    victim_before = [e.id for e in core.run(victim, lambda c: c.events())]
    # reassign accepts agents that have reported in (a heartbeat writes no session event)
    core.run(
        victim,
        lambda c: SessionIndex(client=c.redis, namespace=c.namespace).heartbeat("agent-b"),
    )

    page = supervisor_page
    # reach the attacker's page the way a supervisor does: its link in the sessions list
    page.goto(f"{asgi_server.url}/sessions/?q=zz/")
    page.locator("#session-rows a", has_text=attacker).click()
    expect(page.locator("h1")).to_have_text(attacker)
    wait_live(page)
    result = page.locator("#action-result")

    page.get_by_role("button", name="Release claim").click()
    expect(result).to_have_text("Released agent-a's claim.")
    page.get_by_label("or type an agent id").fill("agent-b")
    page.get_by_role("button", name="Reassign").click()
    expect(result).to_contain_text("Reassigned to agent-b")
    page.get_by_role("button", name="Take over").click()
    expect(result).to_have_text("You now control this session.")
    page.get_by_label("Reply to the customer").fill("reply through a hostile id")
    page.get_by_role("button", name="Send reply").click()
    expect(result).to_have_text("Reply sent.")
    page.get_by_label("Hand back to").select_option("")
    page.get_by_role("button", name="Hand back").click()
    expect(result).to_have_text("Handed back to the queue.")
    page.get_by_label("Note (visible to supervisors and agents)").fill("a note")
    page.get_by_role("button", name="Add a note").click()
    expect(result).to_have_text("Note added.")

    # a live event of the attacker's session reaches this page (its websocket is the right one)
    core.publish(attacker, EventType.MESSAGE, {"text": "live to the attacker page"})
    expect(page.locator("#timeline .event").first).to_contain_text("live to the attacker page")

    page.get_by_role("button", name="Close session").click()
    expect(result).to_have_text("Session closed.")
    expect(page.locator("#session-audit")).to_contain_text("Close session")

    attacker_types = [e.type for e in core.run(attacker, lambda c: c.events())]
    for expected in (
        EventType.HUMAN_TAKEOVER,
        EventType.HUMAN_HANDBACK,
        EventType.SESSION_CLOSED,
    ):
        assert expected in attacker_types, attacker_types
    # the victim: no event, same claim, nobody in control
    assert [e.id for e in core.run(victim, lambda c: c.events())] == victim_before
    assert core.run(victim, lambda c: c.controller()) is None
    page.goto(f"{asgi_server.url}{reverse('coordination:session', args=[victim])}")
    expect(page.locator("h1")).to_have_text(victim)
    expect(page.locator("#session-summary")).to_contain_text("agent-v")
    expect(page.locator("#session-summary")).not_to_contain_text("closed")
    expect(page.locator("#session-audit")).not_to_contain_text("alice")


def test_chromium_resolves_every_url_of_a_hostile_page_to_that_session(
    asgi_server, supervisor_page, core, sid
):
    page = supervisor_page
    checked = 0
    ids = [i if i in (".", "..") else f"{i}{sid}" for i in NASTY_IDS] + [f"zz/../{sid}"]
    ids = [i for i in ids if len(i) <= 256]
    for session_id in ids:
        core.run(session_id, lambda c: c.escalate("hostile id"))
        page.goto(f"{asgi_server.url}{reverse('coordination:session', args=[session_id])}")
        expect(page.locator("h1")).to_have_text(session_id)
        seen = page.evaluate(COLLECT)
        assert session_of(seen["here"]) == session_id, seen["here"]
        for _, value, pathname in seen["found"]:  # "#main", "?page=2": this very page
            if not value.startswith("/"):
                assert pathname == seen["here"], (value, pathname)
        named = [f for f in seen["found"] if f[1].startswith("/") and session_of(f[2]) is not None]
        assert {f[0] for f in named} >= {"action", "hx-post", "ws-connect"}, named
        for attribute, value, pathname in named:
            assert whatwg_path_is_stable(value.split("?")[0]), (session_id, attribute, value)
            assert unquote(pathname) == unquote(value.split("?")[0]), (value, pathname)
            assert session_of(pathname) == session_id, (session_id, attribute, value, pathname)
            checked += 1
    assert checked > 5 * len(ids)
