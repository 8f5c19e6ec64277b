"""Issue 19, the supervisor's daily view: favicon, styled 404/500 in every mode, the overview's
queue and agents, API docs, and the small defects (each with the test that names it)."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as settings_module
from django.template.loader import render_to_string

from coordination import AgentCoordinator, AtomicOperations, EventType
from coordination.foundation.display import humanize_age
from coordination.models import AuditEntry, SavedFilter
from coordination.supervision.escalations import OVERVIEW_QUEUE

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged_in(client, supervisor):
    client.force_login(supervisor)
    return client


def test_favicon_is_linked_and_answered(logged_in):
    body = logged_in.get("/").content.decode()
    assert 'rel="icon" href="/static/coordination/favicon.svg"' in body
    logged_in.logout()
    response = logged_in.get("/favicon.ico")  # no login needed, like the file itself
    assert response.status_code in (301, 302)
    assert response["Location"] == "/static/coordination/favicon.svg"


@pytest.mark.parametrize("debug", [True, False], ids=["debug", "production"])
def test_unknown_session_gets_our_404_page_in_every_mode(logged_in, settings, debug):
    settings.DEBUG = debug
    for path in (
        "/sessions/no-such-session/",
        "/timeline/no-such-session/",
        "/payload/?session=no-such-session&key=k",
    ):
        response = logged_in.get(path)
        body = response.content.decode()
        assert response.status_code == 404, path
        assert '<h1 id="error-title">Not found</h1>' in body, path
        assert "no-such-session" in body, path
        # Django's technical 404 (inline styles, URL patterns) is not shown
        assert "Django tried these URL patterns" not in body and "<style" not in body, path


@pytest.mark.parametrize("debug", [True, False], ids=["debug", "production"])
def test_unknown_urls_get_our_404_page_and_slashes_are_still_appended(logged_in, settings, debug):
    settings.DEBUG = debug
    for path in ("/no/such/page/", "/sessionz", "/%E2%80%AEevil/"):
        response = logged_in.get(path)
        body = response.content.decode()
        assert response.status_code == 404, path
        assert '<h1 id="error-title">Not found</h1>' in body, path
        assert "Django tried these URL patterns" not in body and "<style" not in body, path
    # a page asked for without its slash is still redirected to it (APPEND_SLASH)
    response = logged_in.get("/sessions?status=active")
    assert response.status_code == 301
    assert response["Location"] == "/sessions/?status=active"
    # the JSON API keeps its own JSON 404
    assert logged_in.get("/api/v1/nothing-here").json()["detail"].startswith("no API endpoint")


def test_404_page_escapes_the_hostile_session_id(logged_in, settings):
    settings.DEBUG = True
    body = logged_in.get("/sessions/%3Cscript%3Ealert(1)%3C%2Fscript%3E/").content.decode()
    assert "<script>alert(1)" not in body
    assert "&lt;script&gt;alert(1)" in body


def test_500_page_renders_without_a_request():
    # Django renders 500.html with no request context (the failure may be in the context)
    html = render_to_string("500.html")
    assert "Something went wrong" in html and "<style" not in html


def _escalate(redis_url, namespace, session_id, reason, data=None):
    coord = AgentCoordinator(session_id, redis_url, namespace=namespace)
    return async_to_sync(coord.escalate)(reason, data)


def _queue_row(body: str, session_id: str) -> str:
    match = re.search(
        rf'<tr [^>]*data-session-id="{re.escape(session_id)}"[^>]*>(.*?)</tr>', body, re.S
    )
    assert match, f"no queue row for {session_id}"
    return match.group(1)


def test_queue_rows_show_reason_holder_and_sla_clock(logged_in, redis_url, namespace, settings):
    settings.COORDINATION_ESCALATION_SLA = 600
    coord = AgentCoordinator("q-held", redis_url, namespace=namespace)
    async_to_sync(coord.publish)(EventType.HANDOFF_READY, {"to_agent": "billing"})
    assert async_to_sync(AtomicOperations(redis_url, namespace=namespace).claim_handoff)(
        "q-held", "billing"
    )
    _escalate(redis_url, namespace, "q-held", "customer wants a refund over the limit")
    # later events do not hide the why
    async_to_sync(coord.publish)(EventType.MESSAGE, {"text": "later"})
    _escalate(redis_url, namespace, "q-bare", "")
    body = logged_in.get("/").content.decode()

    held = _queue_row(body, "q-held")
    assert "customer wants a refund over the limit" in held
    assert "billing" in held and "(claim)" in held
    assert re.search(r'data-sla-clock="\d+">(9|10)m left<', held)
    bare = _queue_row(body, "q-bare")
    assert "no reason given" in bare and "nobody" in bare


def test_queue_reason_is_escaped_and_cut(logged_in, redis_url, namespace):
    evil = "<script>alert(1)</script>" + "x" * 1000
    _escalate(redis_url, namespace, "q-evil", evil)
    row = _queue_row(logged_in.get("/").content.decode(), "q-evil")
    assert "<script>alert(1)" not in row and "&lt;script&gt;alert(1)" in row
    assert "x" * 200 not in row  # cut to REASON_CHARS


def test_queue_says_how_many_it_shows_and_links_to_all(logged_in, redis_url, namespace):
    for n in range(OVERVIEW_QUEUE + 2):
        _escalate(redis_url, namespace, f"q-{n:02d}", f"reason {n}")
    body = logged_in.get("/").content.decode()
    assert f"Showing the {OVERVIEW_QUEUE} longest waiting of {OVERVIEW_QUEUE + 2}" in body
    assert 'href="/sessions/?status=escalated"' in body
    assert body.count('data-label="Reason"') == OVERVIEW_QUEUE


def test_overview_tells_stopped_agents_from_none_ever(logged_in, redis_url, namespace, settings):
    body = logged_in.get("/").content.decode()
    assert "No agent has ever reported in" in body and "stopped reporting" not in body

    coord = AgentCoordinator("a-1", redis_url, namespace=namespace)
    async_to_sync(coord.publish)(EventType.AGENT_READY, {"agent_id": "triage"})
    settings.COORDINATION_AGENT_STALE_AFTER = 0.001  # every agent is stale
    eventually_stale = logged_in.get("/").content.decode()
    assert "Agents stopped reporting: 1 known agent (triage)" in eventually_stale
    assert "No agent has ever reported in" not in eventually_stale


def test_api_docs_are_served_locally_under_the_csp(logged_in):
    response = logged_in.get("/api/v1/docs")
    body = response.content.decode()
    assert response.status_code == 200
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in body
    assert "/static/coordination/api-docs.js" in body
    assert "cdn" not in body.lower() and "http" not in body.replace("http-equiv", "")
    # the only <script> without src is the JSON data block, which browsers do not run
    inline = re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>", body)
    assert inline == [' id="swagger-settings" type="application/json"']
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert logged_in.get("/static/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200


def test_api_docs_need_a_login_or_token(client, db):
    assert client.get("/api/v1/docs").status_code == 401


def test_api_root_answers(logged_in):
    browser = logged_in.get("/api/v1/", HTTP_ACCEPT="text/html,application/xhtml+xml")
    assert browser.status_code == 302 and browser["Location"] == "/api/v1/docs"
    client = logged_in.get("/api/v1/", HTTP_ACCEPT="application/json")
    assert client.status_code == 200
    assert client.json()["openapi"] == "/api/v1/openapi.json"
    assert logged_in.get("/api/v1/nothing-here").status_code == 404


def test_bulk_reassign_or_hand_back_without_an_agent_is_refused_once(
    logged_in, redis_url, namespace
):
    for sid in ("b-1", "b-2", "b-3"):
        _escalate(redis_url, namespace, sid, "help")
    for action, words in (
        ("reassign", "Name the agent to reassign"),
        ("hand-back", "Name the agent to hand the selected sessions back to"),
    ):
        body = logged_in.post(
            "/act-bulk/",
            {"action": action, "session_ids": ["b-1", "b-2", "b-3"], "to_agent": "  "},
            HTTP_HX_REQUEST="true",
        ).content.decode()
        assert body.count(words) == 1, action
        assert "Refused:" not in body and "of 3 done" not in body, action
    assert AuditEntry.objects.count() == 0  # nothing was attempted


def test_relative_times_agree_everywhere(logged_in, redis_url, namespace):
    from django.contrib.auth.models import User

    from coordination.supervision import interventions

    _escalate(redis_url, namespace, "t-1", "help")
    actor = interventions.Actor(User.objects.get(username="sup"), None)
    async_to_sync(interventions.add_note)(actor, "t-1", "looked at it")
    body = logged_in.get("/sessions/t-1/").content.decode()
    audit = body.split('id="session-audit"')[1].split("</section>")[0]
    assert "just now" in audit and "minutes ago" not in audit
    assert humanize_age(0) == "just now" and humanize_age(4.9) == "just now"
    assert humanize_age(75) == "1m ago" and humanize_age(7200) == "2h ago"
    # app.js labels times with the same words
    script = (settings_module.BASE_DIR / "static/coordination/app.js").read_text()
    assert '"just now"' in script and '" ago"' in script and "minutes" not in script


def test_saving_a_filter_under_a_taken_name_is_refused_unless_replace(logged_in):
    logged_in.post("/saved-filters/", {"name": "Mine", "status": "human"})
    page = logged_in.post(
        "/saved-filters/", {"name": "Mine", "status": "closed"}, follow=True
    ).content.decode()
    assert "You already have a filter named &#x27;Mine&#x27;" in page
    assert SavedFilter.objects.get(name="Mine").query == "status=human"
    page = logged_in.post(
        "/saved-filters/", {"name": "Mine", "status": "closed", "replace": "on"}, follow=True
    ).content.decode()
    assert "Replaced the filter &#x27;Mine&#x27;." in page
    assert SavedFilter.objects.get(name="Mine").query == "status=closed"


def test_session_page_leads_with_the_escalation_reason_and_sla_clock(
    logged_in, redis_url, namespace, settings
):
    settings.COORDINATION_ESCALATION_SLA = 600
    _escalate(redis_url, namespace, "p-1", "<i>refund</i> over the limit")
    summary = logged_in.get("/sessions/p-1/").content.decode().split('id="session-summary"')[1]
    summary = summary.split("</section>")[0]
    assert (
        'Escalated because</dt><dd class="escalation-reason">&lt;i&gt;refund&lt;/i&gt; over the limit'
        in summary
    )
    assert re.search(r'data-sla-clock="\d+">(9|10)m left<', summary)
