"""The live sockets without permessage-deflate (issue 18): the server no longer compresses each
page's copy of the same frame, Chromium's socket is open with no extension negotiated, and
the overview still updates live over it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from coordination import EventType

from .conftest import wait_live

pytestmark = pytest.mark.browser


def test_the_overview_updates_live_over_an_uncompressed_socket(
    asgi_server, page_factory, core, sid
):
    core.publish(sid, EventType.MESSAGE, {"text": "first"})
    page = page_factory(asgi_server.url)
    page.goto(f"{asgi_server.url}/")
    wait_live(page)
    # a socket opened like the page's own (same origin, same cookies): Chromium offers
    # permessage-deflate on every socket, so an empty answer means the server declined it
    extensions = page.evaluate(
        """() => new Promise((resolve, reject) => {
            const ws = new WebSocket(location.origin.replace("http", "ws") + "/ws/sessions/?view=overview");
            ws.onopen = () => { resolve(ws.extensions); ws.close(); };
            ws.onerror = () => reject(new Error("the socket did not open"));
        })"""
    )
    assert extensions == ""
    core.run(sid, lambda c: c.escalate("a person, please"))
    expect(page.locator("#escalation-queue")).to_contain_text(sid)
