"""The Team page in Chromium (a staff member invites a supervisor and changes a role, at phone
and laptop width) and dark mode (the OS setting, prefers-color-scheme: dark): pages render dark
and axe finds no colour-contrast violation."""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import expect

from coordination import EventType

from .conftest import in_plain_thread, wait_for_js
from .test_every_page import WIDTHS, _overflow, _watch

pytestmark = pytest.mark.browser


def _role_in_database(username: str, django_db_blocker) -> tuple[str, bool]:
    from django.contrib.auth.models import User

    from coordination.dashboard.team import role_of

    def read():
        with django_db_blocker.unblock():
            user = User.objects.prefetch_related("groups").get(username=username)
            return role_of(user), user.has_perm("coordination.intervene")

    return in_plain_thread(read)


def _axe_serious(page, options: dict | None = None) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options=options or {"resultTypes": ["violations"]})
    return [
        f"{v['id']}: {[n['target'] for n in v['nodes']][:5]} {v['nodes'][0].get('failureSummary', '')[:300]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("width", WIDTHS, ids=list(WIDTHS))
def test_staff_invites_a_supervisor_and_changes_a_role(
    asgi_server, page_factory, width, django_db_blocker
):
    base = asgi_server.url
    name = f"inv-{width}-{uuid.uuid4().hex[:8]}"
    w, h = WIDTHS[width]
    page = page_factory(base, viewport={"width": w, "height": h})  # alice: staff
    problems = _watch(page)

    page.click("nav >> text=Team")
    expect(page.locator("h1")).to_have_text("Team")
    page.fill("#id_username", name)
    page.select_option("#id_role", "supervisor")
    page.click("button:has-text('Invite')")
    expect(page.locator(".invite-link")).to_contain_text("This link is shown once")
    link = page.locator("#invite-link-value").input_value()
    assert link.startswith(f"{base}/team/set-password/")
    assert _role_in_database(name, django_db_blocker) == ("supervisor", True)
    row = page.locator(f'tr.team-row[data-username="{name}"]')
    expect(row.locator(".team-role")).to_have_text("Supervisor")
    assert _overflow(page) is None, _overflow(page)

    # change the role through the row's form (htmx swaps the row, the audit list follows)
    row.locator("select").select_option("viewer")
    row.locator("button:has-text('Change role')").click()
    expect(row.locator(".result-ok")).to_contain_text(f"{name} is now viewer (was supervisor).")
    expect(row.locator(".team-role")).to_have_text("Viewer")
    wait_for_js(
        page,
        f"[...document.querySelectorAll('#team-audit tr')].some(r => r.textContent.includes({name!r})"
        " && r.textContent.includes('Change role'))",
        "the role change in the refreshed audit list",
    )
    assert page.url == f"{base}/team/invite/"  # an htmx swap, no navigation
    assert _role_in_database(name, django_db_blocker) == ("viewer", False)
    assert _overflow(page) is None, _overflow(page)

    # and back by keyboard only: arrow on the focused select, Tab to the button, Enter
    row.locator("select").focus()
    page.keyboard.press("ArrowDown")  # viewer -> supervisor
    assert row.locator("select").input_value() == "supervisor"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent").startswith("Change role")
    page.keyboard.press("Enter")
    expect(row.locator(".result-ok")).to_contain_text(f"{name} is now supervisor (was viewer).")
    assert _role_in_database(name, django_db_blocker) == ("supervisor", True)

    # the link works once, in a signed-out browser
    visitor = page_factory(base, username=None, viewport={"width": w, "height": h})
    visitor_problems = _watch(visitor)
    visitor.goto(link)
    visitor.fill("#id_new_password1", "a-long-pass-4567")
    visitor.fill("#id_new_password2", "a-long-pass-4567")
    visitor.click("button:has-text('Set password')")
    visitor.wait_for_url(f"{base}/login/")
    expect(visitor.locator(".messages")).to_contain_text("Your password is set")
    assert _overflow(visitor) is None, _overflow(visitor)
    visitor.goto(link)
    expect(visitor.locator("h1")).to_have_text("This link no longer works")

    page.screenshot(path=f"/tmp/team-{width}.png", full_page=True)
    assert problems == [], "\n".join(problems)
    assert visitor_problems == [], "\n".join(visitor_problems)
    assert _axe_serious(page) == []


def test_dark_mode_follows_the_os_and_keeps_contrast(asgi_server, page_factory, core, sid):
    base = asgi_server.url
    core.publish(sid, EventType.AGENT_READY, {"agent_id": "billing", "capabilities": ["refunds"]})
    core.publish(sid, EventType.MESSAGE, {"text": "I want a refund"})
    core.run(sid, lambda c: c.set_state("order", {"id": 1}))
    core.run(sid, lambda c: c.escalate("customer asks for a refund", {"queue": "billing"}))
    other = f"{sid}-held"
    core.run(other, lambda c: c.escalate("vip"))
    assert core.run(other, lambda c: c.take_over("human:bob"))
    page = page_factory(
        base, color_scheme="dark", bypass_csp=True, viewport={"width": 1440, "height": 900}
    )
    contrast_only = {"runOnly": {"type": "rule", "values": ["color-contrast"]}}
    problems = {}
    paths = ["/", f"/sessions/{sid}/", f"/sessions/{other}/", "/sessions/", "/agents/"]
    for path in [*paths, "/trends/", "/team/"]:
        page.goto(base + path)
        page.wait_for_load_state("load")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 20, 27)", f"{path} is not dark: {background}"
        found = _axe_serious(page, contrast_only)
        if found:
            problems[path] = found
        page.screenshot(path=f"/tmp/dark{path.replace('/', '_')}.png", full_page=True)
    assert problems == {}, problems

    # the same pages in a light context stay light (the file changes nothing there)
    light = page_factory(base, color_scheme="light")
    light.goto(base + "/")
    assert light.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(246, 247, 249)"
