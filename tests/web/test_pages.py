"""Dashboard pages against a real Redis: content, filters, pagination, 404, escaping, 503."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from coordination import AgentCoordinator, AtomicOperations, EventType
from coordination.models import SavedFilter

pytestmark = pytest.mark.django_db


@pytest.fixture
def publish(redis_url, namespace):
    def publish(session_id, etype=EventType.MESSAGE, data=None, **kw):
        coord = AgentCoordinator(session_id, redis_url, namespace=namespace, **kw)
        return async_to_sync(coord.publish)(etype, data or {})

    return publish


@pytest.fixture
def logged_in(client, supervisor):
    client.force_login(supervisor)
    return client


def test_overview_counts_and_queue(logged_in, publish, redis_url, namespace):
    publish("s-1")
    coord = AgentCoordinator("s-esc", redis_url, namespace=namespace)
    async_to_sync(coord.escalate)("angry customer")
    body = logged_in.get("/").content.decode()
    assert "No sessions yet" not in body
    assert 'href="/sessions/s-esc/"' in body
    assert "Escalation queue" in body


def test_escalations_are_highlighted_against_their_queues_sla(
    logged_in, redis_url, namespace, settings
):
    settings.COORDINATION_ESCALATION_SLA = 3600
    settings.COORDINATION_ESCALATION_SLAS = {"vip": 0.001}
    for sid, data in (("e-vip", {"queue": "vip"}), ("e-plain", None)):
        async_to_sync(AgentCoordinator(sid, redis_url, namespace=namespace).escalate)("help", data)
    body = logged_in.get("/").content.decode()

    def row(sid):
        match = re.search(
            rf'<tr class="([^"]*)" data-session-id="{sid}"[^>]*>(.*?)</tr>', body, re.S
        )
        return match.group(1), match.group(2)

    vip_class, vip = row("e-vip")
    plain_class, plain = row("e-plain")
    assert vip_class == "over-sla" and "vip · SLA 0s" in vip
    assert re.search(r'data-sla-deadline="\d+">over SLA', vip)  # shown
    assert plain_class == "" and "default queue · SLA 1h" in plain
    # hidden until the deadline passes; the page's script then shows it without a redraw
    assert re.search(r'data-sla-deadline="\d+" hidden>over SLA', plain)
    page = logged_in.get("/sessions/e-vip/").content.decode()
    summary = page[
        page.index('id="session-summary"') : page.index(
            "</section>", page.index('id="session-summary"')
        )
    ]
    assert "vip · SLA 0s" in summary and re.search(r'data-sla-deadline="\d+">over SLA', summary)


def test_sessions_list_filters_and_cursor_pages(logged_in, publish, redis_url, namespace, settings):
    for n in range(60):
        publish(f"s-{n:02d}")
    atomic = AtomicOperations(redis_url, namespace=namespace)
    async_to_sync(atomic.claim_handoff)("s-07", "billing")
    first = logged_in.get("/sessions/").content.decode()
    assert first.count('data-session-id="') == 50
    assert 'rel="next"' in first
    next_href = (
        first.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
    )
    second = logged_in.get(next_href).content.decode()
    assert second.count('data-session-id="') == 10
    by_agent = logged_in.get("/sessions/?agent=billing").content.decode()
    assert by_agent.count('data-session-id="') == 1 and "s-07" in by_agent
    by_prefix = logged_in.get("/sessions/?q=s-5").content.decode()
    assert by_prefix.count('data-session-id="') == 10
    none = logged_in.get("/sessions/?status=human").content.decode()
    assert "No session matches these filters" in none


def test_bad_cursor_is_a_400_with_a_message(logged_in):
    response = logged_in.get("/sessions/?cursor=not-a-cursor")
    assert response.status_code == 400
    assert b"cursor" in response.content


def test_session_page_shows_state_claim_and_timeline(logged_in, publish, redis_url, namespace):
    coord = AgentCoordinator("user:1:{x}", redis_url, namespace=namespace)
    async_to_sync(coord.publish)(EventType.HANDOFF_READY, {"to_agent": "billing"})
    async_to_sync(coord.set_state)("order", {"id": "ORD-1", "items": [1, 2]})
    async_to_sync(AtomicOperations(redis_url, namespace=namespace).claim_handoff)(
        "user:1:{x}", "billing"
    )
    response = logged_in.get("/sessions/user:1:%7Bx%7D/")
    body = response.content.decode()
    assert response.status_code == 200
    assert "&quot;ORD-1&quot;" in body  # pretty-printed JSON, escaped
    assert "<strong>billing</strong> · token 1" in body
    assert body.count('class="event type-') == 3
    assert 'ws-connect="/ws/session/user%3A1%3A%7Bx%7D/"' in body


def test_timeline_pages_older_events(logged_in, publish):
    for n in range(120):
        publish("s-long", data={"n": n})
    body = logged_in.get("/sessions/s-long/").content.decode()
    assert body.count('class="event type-') == 50
    href = body.split('id="load-older"')[1].split('href="')[1].split('"')[0].replace("&amp;", "&")
    older = logged_in.get(href, HTTP_HX_REQUEST="true").content.decode()
    assert older.count('class="event type-') == 50
    assert 'hx-swap-oob="beforeend:#timeline"' in older
    plain = logged_in.get(href).content.decode()  # works without JavaScript too
    assert "<h1>Older events</h1>" in plain


def test_unknown_session_is_a_404_page(logged_in):
    response = logged_in.get("/sessions/nope/")
    assert response.status_code == 404
    assert b"No session" in response.content


def test_agent_data_is_escaped_everywhere(logged_in, publish, redis_url, namespace):
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    publish(
        evil,
        EventType.AGENT_READY,
        {"agent_id": evil, "capabilities": [evil], "note": evil},
        source="x",
    )
    coord = AgentCoordinator(evil, redis_url, namespace=namespace)
    async_to_sync(coord.set_state)(evil, evil)
    async_to_sync(coord.escalate)(evil)
    pages = [
        "/",
        "/sessions/",
        "/agents/",
        "/sessions/%3Cscript%3Ealert(1)%3C/script%3E%3Cimg%20src=x%20onerror=alert(2)%3E/",
    ]
    for url in pages:
        response = logged_in.get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        assert "<script>alert(1)" not in body and "<img src=x" not in body, url


def test_redis_down_gives_a_503_page_not_a_traceback(logged_in, settings):
    settings.REDIS_URL = "redis://:pw-secret@127.0.0.1:1/0"
    response = logged_in.get("/sessions/")
    assert response.status_code == 503
    body = response.content.decode()
    assert "Redis unavailable" in body and "pw-secret" not in body and "127.0.0.1:1" in body


def test_saved_filters_are_per_user(logged_in, viewer, publish):
    publish("sf-1")
    response = logged_in.post(
        "/saved-filters/",
        {"name": "  My escalations ", "status": "escalated", "q": "sf-", "agent": ""},
    )
    assert response.status_code == 302
    assert response["Location"] == "/sessions/?status=escalated&q=sf-"
    page = logged_in.get(response["Location"]).content.decode()
    assert "Saved the filter &#x27;My escalations&#x27;." in page
    assert (
        '<a href="/sessions/?status=escalated&amp;q=sf-" aria-current="true">My escalations</a>'
        in page
    )
    # the same name again is refused unless "replace" is ticked; bad input is refused too
    refused = logged_in.post(
        "/saved-filters/", {"name": "My escalations", "status": "human"}, follow=True
    ).content.decode()
    assert "You already have a filter named &#x27;My escalations&#x27;" in refused
    assert '<a href="/sessions/?status=escalated&amp;q=sf-">My escalations</a>' in refused
    logged_in.post(
        "/saved-filters/", {"name": "My escalations", "status": "human", "replace": "on"}
    )
    assert (
        '<a href="/sessions/?status=human">My escalations</a>'
        in logged_in.get("/sessions/").content.decode()
    )
    for data, message in (
        ({"name": "", "status": "human"}, "Give the filter a name."),
        ({"name": "x" * 61, "status": "human"}, "the limit is 60"),
        ({"name": "nothing", "status": "bogus"}, "Set a status, an owner or an id prefix"),
    ):
        follow = logged_in.post("/saved-filters/", data, follow=True).content.decode()
        assert message in follow, message
    # another user sees none of them and cannot delete them
    saved = SavedFilter.objects.get()
    other = Client()
    other.force_login(viewer)
    assert "My escalations" not in other.get("/sessions/").content.decode()
    assert other.post(f"/saved-filters/{saved.pk}/delete/").status_code == 404
    assert logged_in.post(f"/saved-filters/{saved.pk}/delete/").status_code == 302
    assert not SavedFilter.objects.exists()


def test_saved_filters_are_capped_per_user(logged_in, supervisor):
    SavedFilter.objects.bulk_create(
        SavedFilter(user=supervisor, name=f"f{n}", query=f"q=f{n}") for n in range(50)
    )
    page = logged_in.post("/saved-filters/", {"name": "one more", "q": "x"}, follow=True)
    assert "You have 50 saved filters; delete one to save another." in page.content.decode()
    replacing = {"name": "f3", "q": "replaced", "replace": "on"}
    logged_in.post("/saved-filters/", replacing)  # replacing (asked for) is allowed at the cap
    assert SavedFilter.objects.get(name="f3").query == "q=replaced"


def test_text_fields_take_the_limit_the_server_enforces(logged_in, publish, supervisor):
    from coordination.supervision import interventions
    from coordination.supervision.interventions import Actor
    from coordination.supervision.limits import MAX_TEXT

    publish("limits-1")
    async_to_sync(interventions.take_over)(Actor(supervisor, None), "limits-1")
    body = logged_in.get("/sessions/limits-1/").content.decode()
    fields = re.findall(r'<(?:textarea|input)[^>]*name="(text|resolution)"[^>]*>', body)
    lengths = re.findall(
        r'<(?:textarea|input)[^>]*name="(?:text|resolution)"[^>]*maxlength="(\d+)"', body
    )
    assert {"text", "resolution"} <= set(fields), fields
    assert lengths and set(lengths) == {str(MAX_TEXT)}, lengths
