"""/trends/ and the sessions list's sorting and views in Chromium, at phone and laptop width:
nothing wider than the window, no console error or CSP violation (SVG drawn with presentation
attributes only), the refresh and the sort links work through htmx and keep their hrefs."""

from __future__ import annotations

import pytest

from coordination import EventType, SessionIndex
from coordination.dashboard import trends

from ..waiting import wait_until
from .conftest import wait_for_js
from .test_every_page import WIDTHS, _overflow, _watch

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("width", WIDTHS, ids=list(WIDTHS))
def test_trends_and_sorted_list_fit_and_work(
    asgi_server, page_factory, core, sid, width, redis_server_url, browser_namespace
):
    base = asgi_server.url
    core.publish(sid, EventType.MESSAGE, {"text": "a refund please"})
    core.run(sid, lambda c: c.escalate("refund", {"queue": "billing"}))
    assert core.run(sid, lambda c: c.take_over("human:alice"))
    w, h = WIDTHS[width]
    page = page_factory(base, viewport={"width": w, "height": h})
    problems = _watch(page)

    page.goto(base + "/trends/")
    page.wait_for_load_state("load")
    assert page.locator("svg.chart[role=img] title").count() >= 10
    # the relay in the server counts as events pass; once it has, a refresh (hx-get) shows it
    index = SessionIndex(redis_server_url, namespace=browser_namespace)

    def takeovers() -> int:
        buckets = core.call(lambda: trends.read_buckets(index, "minute"))
        return sum(b.counts["takeovers"] for b in buckets)

    wait_until(lambda: takeovers() >= 1, "the server's relay to count the takeover", timeout=15)
    page.click("a[hx-get='/trends/']")
    wait_for_js(
        page,
        "/^[1-9]/.test(document.querySelector('#trend-takeovers .muted')?.textContent || '')",
        "the takeover counted on the refreshed trends page",
    )
    assert _overflow(page) is None, _overflow(page)
    page.screenshot(path=f"/tmp/trends-{width}.png", full_page=False)

    page.goto(base + "/sessions/?show=mine")
    page.wait_for_load_state("load")
    wait_for_js(
        page,
        f"[...document.querySelectorAll('#session-rows tr')].some(r => r.dataset.sessionId === {sid!r})",
        "the session taken over by alice in her view",
    )
    if width == "phone":  # the table's header is hidden where rows stack: the sort links
        page.click(".sort-choices a:has-text('Session A–Z')")
    else:
        page.click("th a.sort-link:has-text('Session')")
    wait_for_js(
        page,
        "document.querySelector('th[aria-sort=ascending] a.sort-link')?.textContent"
        ".includes('Session') === true && location.search.includes('sort=session')",
        "the list sorted by session id through hx-get, its URL pushed",
    )
    assert _overflow(page) is None, _overflow(page)
    page.screenshot(path=f"/tmp/sessions-sorted-{width}.png", full_page=False)
    assert problems == [], "\n".join(problems)
