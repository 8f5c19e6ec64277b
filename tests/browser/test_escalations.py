"""Escalations in the browser: opt-in alerts (notification and tone) and per-queue SLAs that
light up when their deadline passes, with no redraw from the server."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .conftest import LiveServer, wait_for_js, wait_live

pytestmark = pytest.mark.browser

RECORD_NOTIFICATIONS = """
(() => {
  const Real = window.Notification;
  window.__notified = [];
  class Recorded extends Real {
    constructor(title, options) {
      super(title, options);
      window.__notified.push([title, options && options.body]);
    }
  }
  Object.defineProperty(Recorded, "permission", { get: () => Real.permission });
  Recorded.requestPermission = (...args) => Real.requestPermission(...args);
  window.Notification = Recorded;
})();
"""


@pytest.fixture(scope="module")
def fast_sla_server(server_env):
    server = LiveServer({**server_env, "COORDINATION_ESCALATION_SLAS": "fast=60"}).start()
    yield server
    server.stop()


def test_opted_in_supervisor_is_alerted_and_the_sla_lights_up(
    fast_sla_server, page_factory, core, sid
):
    url = fast_sla_server.url
    page = page_factory(url, permissions=["notifications"])
    page.context.add_init_script(RECORD_NOTIFICATIONS)
    # The page's clock is Playwright's: it flows with real time until the test moves it past
    # the SLA, so a slow machine cannot breach a deadline before the test looks.
    page.clock.install()
    core.run(f"{sid}-old", lambda c: c.escalate("was waiting already"))
    page.goto(f"{url}/")
    wait_live(page)
    toggle = page.locator("[data-alerts-toggle]")
    expect(toggle).to_have_text("Escalation alerts: off")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(toggle).to_have_text("Escalation alerts: on")

    core.run(sid, lambda c: c.escalate("refund", {"queue": "fast"}))
    row = page.locator(f'#escalation-queue tr[data-session-id="{sid}"]')
    expect(row).to_contain_text("fast · SLA 1m")
    wait_for_js(page, f"window.__notified.some(n => n[1] === {sid!r})", "the notification")
    assert page.evaluate("window.coordinator.alertLog") == [sid]  # not the one already there
    assert page.evaluate("window.__notified") == [["Session escalated", sid]]

    # no event arrives after the escalation: the page's own clock shows the breach
    tag = row.locator("[data-sla-deadline]")
    expect(tag).to_be_hidden()
    page.clock.fast_forward("01:05")
    expect(tag).to_be_visible()
    expect(row).to_have_class("over-sla")

    # the choice is remembered, and a page without it stays quiet
    page.reload()
    expect(page.locator("[data-alerts-toggle]")).to_have_text("Escalation alerts: on")
    quiet = page_factory(url, "bob", permissions=["notifications"])
    quiet.context.add_init_script(RECORD_NOTIFICATIONS)
    quiet.goto(f"{url}/sessions/?q={sid}")
    wait_live(quiet)
    core.run(f"{sid}-2", lambda c: c.escalate("another"))
    expect(quiet.locator(f'#session-rows tr[data-session-id="{sid}-2"]')).to_be_visible()
    wait_for_js(page, f"window.coordinator.alertLog.includes({sid + '-2'!r})", "the alert")
    assert quiet.evaluate("window.__notified") == []
