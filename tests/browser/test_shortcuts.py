"""Keyboard shortcuts on the session page (issue 19): t takes over, r goes to the reply box,
h to the hand-back form, ? lists them; keys typed into a field are text, not shortcuts."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .conftest import wait_for_js, wait_live

pytestmark = pytest.mark.browser


def test_take_over_reply_and_hand_back_from_the_keyboard(asgi_server, page_factory, core, sid):
    core.run(sid, lambda c: c.escalate("customer is angry"))
    page = page_factory(asgi_server.url)
    page.goto(f"{asgi_server.url}/sessions/{sid}/")
    wait_live(page)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

    page.keyboard.press("?")
    expect(page.locator("#shortcuts-help")).to_be_visible()
    expect(page.locator("#shortcuts-help")).to_contain_text("Take over the session")
    page.keyboard.press("Escape")
    expect(page.locator("#shortcuts-help")).to_be_hidden()

    page.keyboard.press("r")  # not offered yet: the page says why
    expect(page.locator("#action-result")).to_contain_text("take it over first")

    page.keyboard.press("t")
    expect(page.locator("#action-result")).to_contain_text("You now control this session.")
    expect(page.locator("#reply-text")).to_be_visible()

    page.keyboard.press("r")
    wait_for_js(page, "document.activeElement?.id === 'reply-text'", "focus in the reply box")
    page.keyboard.type("that is fine")  # 't' and 'h' typed here are text
    expect(page.locator("#reply-text")).to_have_value("that is fine")
    expect(page.locator("#shortcuts-help")).to_have_count(1)  # '?' was not typed; still hidden
    page.locator("#reply-text").evaluate("el => el.blur()")

    page.keyboard.press("h")
    wait_for_js(page, "document.activeElement?.id === 'hb-agent'", "focus in the hand-back form")
    assert not problems, problems


def test_a_viewer_is_told_take_over_is_not_offered(asgi_server, page_factory, core, sid):
    core.run(sid, lambda c: c.escalate("help"))
    page = page_factory(asgi_server.url, "victor")
    page.goto(f"{asgi_server.url}/sessions/{sid}/")
    page.keyboard.press("t")
    expect(page.locator("#action-result")).to_contain_text("Take over is not offered here")
    assert core.run(sid, lambda c: c.controller()) is None
