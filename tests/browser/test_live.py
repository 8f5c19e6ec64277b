"""The live dashboard in a real browser: events appear without reloads, reconnects catch up,
agent data stays inert, anonymous and foreign-origin access is refused, pages are accessible."""

from __future__ import annotations

import asyncio
import re

import pytest
import websockets
from playwright.sync_api import expect

from coordination import EventType

from .conftest import LiveServer, wait_live

pytestmark = pytest.mark.browser


def test_published_event_appears_live_and_row_moves(asgi_server, page_factory, core, sid):
    other = sid + "-other"
    core.publish(sid, EventType.HANDOFF_READY, {"to_agent": "billing"})
    core.publish(other, EventType.MESSAGE, {"text": "newer"})

    page = page_factory(asgi_server.url)
    page.goto(f"{asgi_server.url}/sessions/{sid}/")
    wait_live(page)
    core.publish(sid, EventType.MESSAGE, {"text": "hello from the test"})
    expect(page.locator("#timeline .event").first).to_contain_text("hello from the test")
    expect(page.locator("#timeline .event")).to_have_count(2)

    core.publish(other, EventType.MESSAGE, {"text": "now the newest"})
    listing = page.context.new_page()
    listing.goto(f"{asgi_server.url}/sessions/")
    wait_live(listing)
    expect(listing.locator("#session-rows tr").first).to_have_attribute("data-session-id", other)
    core.publish(sid, EventType.MESSAGE, {"text": "moves the row"})
    expect(listing.locator("#session-rows tr").first).to_have_attribute("data-session-id", sid)
    expect(listing.locator(f'#session-rows tr[data-session-id="{sid}"]')).to_have_count(1)


def test_reconnect_shows_every_missed_event_once(server_env, page_factory, core, sid):
    server = LiveServer(server_env).start()
    try:
        core.publish(sid, EventType.MESSAGE, {"n": 0})
        page = page_factory(server.url)
        page.goto(f"{server.url}/sessions/{sid}/")
        wait_live(page)
        core.publish(sid, EventType.MESSAGE, {"n": 1})
        expect(page.locator("#timeline .event")).to_have_count(2)

        server.stop()  # drops the websocket (and the relay)
        expect(page.locator("[data-live-indicator]")).to_have_attribute(
            "data-state", "disconnected"
        )
        for n in range(2, 7):
            core.publish(sid, EventType.MESSAGE, {"n": n})
        server.start()
        wait_live(page)
        expect(page.locator("#timeline .event")).to_have_count(7, timeout=30_000)
        core.publish(sid, EventType.MESSAGE, {"n": 7})
        expect(page.locator("#timeline .event")).to_have_count(8)
        ids = page.locator("#timeline .event").evaluate_all(
            "els => els.map(e => e.dataset.eventId)"
        )
        assert len(ids) == len(set(ids)) == 8
        previews = page.locator("#timeline .event .event-preview").all_inner_texts()
        assert previews == [f'{{"n": {n}}}' for n in range(7, -1, -1)]
    finally:
        server.stop()


def test_script_in_agent_data_is_shown_as_text_and_never_runs(asgi_server, page_factory, core, sid):
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    core.publish(sid, EventType.MESSAGE, {"text": evil})
    page = page_factory(asgi_server.url)
    page.goto(f"{asgi_server.url}/sessions/{sid}/")
    wait_live(page)
    core.publish(sid, EventType.MESSAGE, {"live": evil})
    core.run(sid, lambda c: c.set_state("note", evil))
    expect(page.locator("#timeline .event")).to_have_count(3)
    page.locator("#timeline .event summary").first.click()
    expect(page.locator("#timeline .event pre").first).to_contain_text("<script>alert(1)</script>")
    expect(page.locator("#session-state")).to_contain_text("<img src=x")
    assert page.locator("#timeline img, #session-state img").count() == 0
    page.goto(f"{asgi_server.url}/sessions/")
    expect(page.locator("#session-rows tr", has_text=sid)).to_have_count(1)
    assert page.locator("img[src='x']").count() == 0
    assert page.dialogs == []


def test_anonymous_http_and_websocket_are_refused(asgi_server, page_factory, core):
    page = page_factory(asgi_server.url, username=None)
    page.goto(f"{asgi_server.url}/sessions/")
    assert "/login/" in page.url

    async def try_ws(origin=None, cookie=None):
        headers = {}
        if cookie:
            headers["Cookie"] = cookie
        kwargs = {"additional_headers": headers}
        if origin:
            kwargs["origin"] = origin
        try:
            async with websockets.connect(
                f"ws://127.0.0.1:{asgi_server.port}/ws/sessions/", **kwargs
            ) as ws:
                await asyncio.wait_for(ws.recv(), 2)
                return "open"
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else "closed"

    assert core.call(lambda: try_ws(origin=asgi_server.url)) in (403, 4401)
    logged = page_factory(asgi_server.url)
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in logged.context.cookies())
    assert core.call(lambda: try_ws(origin="http://evil.example", cookie=cookie)) == 403


def test_pages_have_no_serious_accessibility_violations(asgi_server, page_factory, core, sid):
    from axe_playwright_python.sync_playwright import Axe

    core.publish(sid, EventType.AGENT_READY, {"agent_id": "billing", "capabilities": ["refunds"]})
    core.run(sid, lambda c: c.set_state("order", {"id": 1}))
    page = page_factory(asgi_server.url, bypass_csp=True)
    axe = Axe()
    problems = {}
    for path in ["/", "/sessions/", f"/sessions/{sid}/", "/agents/", "/login/"]:
        page.goto(f"{asgi_server.url}{path}")
        results = axe.run(page)
        serious = [
            v["id"]
            for v in results.response["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        if serious:
            problems[path] = serious
    assert problems == {}


def test_javascript_urls_in_agent_data_stay_inert(asgi_server, page_factory, core, sid):
    evil_id = f"javascript:alert(3)//{sid}"
    core.publish(
        evil_id,
        EventType.MESSAGE,
        {"link": "javascript:alert(4)", "html": "<a href=javascript:alert(5)>x</a>"},
    )
    page = page_factory(asgi_server.url)
    page.goto(f"{asgi_server.url}/sessions/?q=javascript")
    link = page.locator(f'#session-rows tr[data-session-id="{evil_id}"] a')
    assert link.get_attribute("href").startswith("/sessions/javascript")
    link.click()
    expect(page.locator("h1")).to_contain_text(evil_id)
    assert page.url.startswith(asgi_server.url)
    page.locator("#timeline .event summary").first.click()
    expect(page.locator("#timeline .event pre").first).to_contain_text(
        "<a href=javascript:alert(5)>"
    )
    assert page.locator("#timeline a[href^='javascript']").count() == 0
    assert page.dialogs == []


def test_pages_fall_back_to_polling_when_websockets_cannot_pass(
    asgi_server, page_factory, core, sid
):
    core.publish(sid, EventType.MESSAGE, {"text": "before"})
    page = page_factory(asgi_server.url)
    refused = []

    def refuse(ws):  # as a proxy that does not pass websockets: every attempt is closed
        refused.append(ws.url)
        ws.close(code=1013)

    page.route_web_socket(re.compile(r"/ws/"), refuse)
    indicator = page.locator("[data-live-indicator]")
    page.goto(f"{asgi_server.url}/sessions/{sid}/")
    expect(indicator).to_have_attribute("data-state", "polling", timeout=15_000)
    expect(indicator).to_contain_text("Live updates unavailable: refreshing every 5 s")
    core.publish(sid, EventType.MESSAGE, {"text": "while polling"})
    expect(page.locator("#timeline .event").first).to_contain_text("while polling", timeout=15_000)
    expect(page.locator("#timeline .event")).to_have_count(2)
    core.run(sid, lambda c: c.escalate("polled escalation"))
    expect(page.locator("#session-summary")).to_contain_text("escalated", timeout=15_000)

    page.goto(f"{asgi_server.url}/sessions/?q={sid}")
    expect(indicator).to_have_attribute("data-state", "polling", timeout=15_000)
    core.publish(f"{sid}-new", EventType.MESSAGE, {})
    expect(page.locator(f"#session-rows tr[data-session-id='{sid}-new']")).to_be_visible(
        timeout=15_000
    )
    assert refused and all("/ws/" in url for url in refused)
