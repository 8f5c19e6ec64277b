"""Every page at phone (390 px) and laptop (1440 px) width: nothing wider than the window,
no console error, uncaught exception or CSP violation while it loads and while it takes a live
update (issue 19)."""

from __future__ import annotations

import pytest

from coordination import EventType

from .conftest import wait_for_js, wait_live

pytestmark = pytest.mark.browser

WIDTHS = {"phone": (390, 844), "laptop": (1440, 900)}


def _watch(page) -> list[str]:
    """Console errors and uncaught exceptions (a CSP violation is a console error)."""
    problems: list[str] = []
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    # every failed request (a missing /favicon.ico too), but the page's own expected status
    page.on(
        "response",
        lambda r: (
            problems.append(f"HTTP {r.status} for {r.url}")
            if r.status >= 400 and r.request.resource_type != "document"
            else None
        ),
    )
    return problems


def _overflow(page) -> str | None:
    widths = page.evaluate(
        "[document.documentElement.scrollWidth, window.innerWidth, document.body.scrollWidth]"
    )
    if widths[0] > widths[1]:
        # name the widest element, so a failure says what to fix
        culprit = page.evaluate(
            """() => { let worst = null, right = window.innerWidth;
                for (const el of document.querySelectorAll('body *')) {
                  const r = el.getBoundingClientRect();
                  if (r.right > right + 0.5) { right = r.right; worst = el; } }
                return worst ? worst.tagName + '.' + worst.className + '#' + worst.id + ' right=' + right : '?'; }"""
        )
        return f"scrollWidth {widths[0]} > innerWidth {widths[1]} ({culprit})"
    return None


@pytest.mark.parametrize("width", WIDTHS, ids=list(WIDTHS))
def test_every_page_fits_and_loads_cleanly(asgi_server, page_factory, core, sid, width):
    base = asgi_server.url
    long_capabilities = [f"capability-number-{n}" for n in range(8)]
    # an agent with a long id and many capabilities: the agents table must stay in its card
    core.publish(
        sid,
        EventType.AGENT_READY,
        {"agent_id": f"{sid}-agent-with-a-rather-long-name", "capabilities": long_capabilities},
    )
    long_id = f"{sid}-" + "a-very-long-session-identifier-" * 3
    core.publish(long_id, EventType.MESSAGE, {"text": "x" * 300})
    core.run(sid, lambda c: c.escalate("customer asks for a refund", {"queue": "billing"}))
    event = core.publish(sid, EventType.MESSAGE, {"text": "hello " * 80})
    core.run(sid, lambda c: c.set_state("profile", {"name": "n" * 200}))

    w, h = WIDTHS[width]
    page = page_factory(base, viewport={"width": w, "height": h})
    problems = _watch(page)
    report: list[str] = []

    def check(path: str, what: str, live=None, expect_status: int = 200, ready=None) -> None:
        problems.clear()
        response = page.goto(base + path)
        if response.status != expect_status:
            report.append(f"{what} at {width}: HTTP {response.status}, not {expect_status}")
        page.wait_for_load_state("load")
        if live is not None:
            wait_live(page)
            live()
        if ready is not None:
            ready()
        overflow = _overflow(page)
        if overflow:
            report.append(f"{what} at {width}: {overflow}")
        report.extend(
            f"{what} at {width}: {p}"
            for p in problems
            # a 404 page's own status is logged as a failed load; it is what is asked for
            if not (expect_status == 404 and p.startswith("console error: Failed to load resource"))
        )

    counter = iter(range(1000))

    def live_event_on_session_page() -> None:
        n = next(counter)
        core.publish(sid, EventType.MESSAGE, {"text": f"live {n}"})
        wait_for_js(
            page,
            f"document.querySelector('#timeline .event-preview')?.textContent.includes('live {n}')",
            "the live event in the timeline",
        )

    def live_event_on_list() -> None:
        n = next(counter)
        core.publish(sid, EventType.MESSAGE, {"text": f"list {n}"})
        wait_for_js(
            page,
            f"document.querySelector('#session-rows tr')?.dataset.sessionId === {sid!r}",
            "the session's row moved to the top",
        )

    def live_event_on_overview() -> None:
        other = f"{sid}-esc-{next(counter)}"
        core.run(other, lambda c: c.escalate("live escalation"))
        wait_for_js(
            page,
            f"!!document.querySelector('#escalation-queue [data-session-id=\"{other}\"]')",
            "the new escalation in the queue",
        )

    check("/", "overview", live_event_on_overview)
    check("/sessions/", "sessions", live_event_on_list)
    check(f"/sessions/{sid}/", "session page", live_event_on_session_page)
    check(f"/sessions/{long_id}/", "long session page")
    check("/agents/", "agents")
    check("/trends/", "trends")
    check("/team/", "team")
    check(f"/payload/?session={sid}&event={event.id}", "payload")
    check("/sessions/no-such-session-here/", "not found", expect_status=404)
    check("/no/such/page/", "unknown URL", expect_status=404)
    check("/admin/", "admin index")

    def swagger_drawn() -> None:
        wait_for_js(page, "!!document.querySelector('.swagger-ui .opblock')", "Swagger UI")

    check("/api/v1/docs", "API docs", ready=swagger_drawn)
    page.context.clear_cookies()
    check("/login/", "login")
    assert not report, "\n".join(report)


@pytest.mark.parametrize("width", WIDTHS, ids=list(WIDTHS))
def test_every_page_is_accessible_at_both_widths(asgi_server, page_factory, core, sid, width):
    from axe_playwright_python.sync_playwright import Axe

    core.publish(sid, EventType.AGENT_READY, {"agent_id": f"{sid}-agent", "capabilities": ["x"]})
    core.run(sid, lambda c: c.escalate("customer asks for a refund"))
    event = core.publish(sid, EventType.MESSAGE, {"text": "hello"})
    w, h = WIDTHS[width]
    page = page_factory(asgi_server.url, viewport={"width": w, "height": h}, bypass_csp=True)
    axe = Axe()
    problems = {}
    for path in (
        "/",
        "/sessions/",
        f"/sessions/{sid}/",
        "/agents/",
        "/trends/",
        "/team/",
        f"/payload/?session={sid}&event={event.id}",
        "/sessions/no-such-session/",
    ):
        page.goto(f"{asgi_server.url}{path}")
        serious = [
            v["id"]
            for v in axe.run(page).response["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        if serious:
            problems[path] = serious
    assert problems == {}
