"""Supervisor actions through the dashboard: events with the actor, audit entries, races,
stale pages, roles and CSRF."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import Client

from coordination import AgentCoordinator, AtomicOperations, EventType, SessionIndex
from coordination.models import AuditEntry
from coordination.realtime.routing import websocket_urlpatterns
from coordination.supervision import interventions

pytestmark = pytest.mark.django_db


@pytest.fixture
def core(redis_url, namespace):
    class Core:
        def coord(self, sid):
            return AgentCoordinator(sid, redis_url, namespace=namespace)

        def atomic(self):
            return AtomicOperations(redis_url, namespace=namespace)

        def events(self, sid):
            return async_to_sync(self.coord(sid).events)()

        def agent_reports_in(self, agent_id):
            index = SessionIndex(redis_url, namespace=namespace)
            async_to_sync(index.heartbeat)(agent_id)

        def owner(self, sid):
            index = SessionIndex(redis_url, namespace=namespace)
            return async_to_sync(index.get_session)(sid).owner

    Core.redis_url, Core.namespace = redis_url, namespace
    return Core()


def post(client, action, sid, htmx=True, **data):
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    return client.post(f"/act/{action}/{sid}/", data, **headers)


@pytest.fixture
def sup_client(client, supervisor):
    client.force_login(supervisor)
    return client


def test_take_over_reply_and_hand_back(sup_client, core):
    coord = core.coord("s-1")
    async_to_sync(coord.escalate)("angry customer")
    response = post(sup_client, "take-over", "s-1")
    assert (
        response.status_code == 200 and "You now control this session." in response.content.decode()
    )
    assert async_to_sync(coord.controller)() == "human:sup"
    assert async_to_sync(core.atomic().claim_handoff)("s-1", "bot") is False

    post(sup_client, "reply", "s-1", text="Hello, I am a human. <b>hi</b>")
    response = post(
        sup_client, "hand-back", "s-1", to_agent="billing", expected_controller="human:sup"
    )
    assert "Handed back to billing." in response.content.decode()

    events = core.events("s-1")
    takeover = next(e for e in events if e.type is EventType.HUMAN_TAKEOVER)
    assert takeover.data["by"] == "human:sup" and takeover.source == "human:sup"
    reply = next(e for e in events if e.type is EventType.MESSAGE)
    assert reply.data == {
        "role": "human",
        "from": "human:sup",
        "text": "Hello, I am a human. <b>hi</b>",
    }
    handback = events[-1]
    assert handback.type is EventType.HUMAN_HANDBACK and handback.data["to_agent"] == "billing"
    assert [a.action for a in AuditEntry.objects.order_by("id")] == [
        "take_over",
        "reply",
        "hand_back",
    ]
    entry = AuditEntry.objects.get(action="take_over")
    assert entry.before["status"] == "escalated" and entry.after["controller"] == "human:sup"
    assert entry.actor_name == "sup" and entry.client_address == "127.0.0.1"


@pytest.mark.parametrize(("later", "label"), [(2, "just now"), (95, "1m ago")])
def test_second_supervisor_learns_who_took_over(
    sup_client, core, django_user_model, monkeypatch, later, label
):
    async_to_sync(core.coord("s-2").escalate)("x")
    async_to_sync(core.coord("s-2").take_over)("human:ann")
    taken = async_to_sync(SessionIndex(core.redis_url, namespace=core.namespace).get_session)(
        "s-2"
    ).taken_at
    monkeypatch.setattr(interventions, "clock", lambda: taken + later)
    response = post(sup_client, "take-over", "s-2")
    body = response.content.decode()
    assert f"Taken over by ann {label}." in body
    assert AuditEntry.objects.get().outcome == "refused"


def test_release_and_reassign_refuse_a_stale_page(sup_client, core):
    atomic = core.atomic()
    core.agent_reports_in("sales")  # reassign accepts agents the index knows
    async_to_sync(atomic.claim_handoff)("s-3", "billing")
    async_to_sync(atomic.release_handoff)("s-3", "billing")  # the agent let go meanwhile
    body = post(sup_client, "release", "s-3", expected_owner="billing").content.decode()
    assert "The claim was released (or its lease expired) since this page was drawn." in body
    async_to_sync(atomic.claim_handoff)("s-3", "tech")
    body = post(sup_client, "reassign", "s-3", to_agent="sales", expected_owner="").content.decode()
    assert "it is now held by tech" in body
    body = post(
        sup_client, "reassign", "s-3", to_agent="sales", expected_owner="tech"
    ).content.decode()
    assert "Reassigned to sales" in body
    body = post(sup_client, "release", "s-3", expected_owner="sales").content.decode()
    assert "Released sales&#x27;s claim." in body
    types = [e.type for e in core.events("s-3")][-2:]
    assert types == [EventType.HANDOFF_REASSIGNED, EventType.HANDOFF_RELEASED]
    assert [a.outcome for a in AuditEntry.objects.order_by("id")] == [
        "refused",
        "refused",
        "done",
        "done",
    ]


def test_note_close_and_acting_on_a_closed_session(sup_client, core):
    async_to_sync(core.coord("s-4").publish)(EventType.MESSAGE, {})
    post(sup_client, "note", "s-4", text="customer called twice")
    assert "Session closed." in post(sup_client, "close", "s-4").content.decode()
    assert "The session is closed." in post(sup_client, "close", "s-4").content.decode()
    assert "The session is closed." in post(sup_client, "reply", "s-4", text="hi").content.decode()
    events = core.events("s-4")
    assert events[1].type is EventType.NOTE and events[1].data["text"] == "customer called twice"
    assert events[2].type is EventType.SESSION_CLOSED and events[2].data["by"] == "human:sup"


def test_bad_input_gets_a_message_not_an_error(sup_client, core):
    async_to_sync(core.coord("s-5").publish)(EventType.MESSAGE, {})
    assert "The reply is empty." in post(sup_client, "reply", "s-5", text="  ").content.decode()
    assert "Agent id:" in post(sup_client, "reassign", "s-5", to_agent="").content.decode()
    unknown = post(sup_client, "take-over", "nope")
    assert unknown.status_code == 404 and "does not exist" in unknown.content.decode()
    assert post(sup_client, "explode", "s-5").status_code == 404


def test_without_javascript_actions_redirect_with_a_message(sup_client, core):
    async_to_sync(core.coord("s-6").publish)(EventType.MESSAGE, {})
    response = post(sup_client, "take-over", "s-6", htmx=False)
    assert response.status_code == 302 and response["Location"] == "/sessions/s-6/"
    page = sup_client.get("/sessions/s-6/").content.decode()
    assert "You now control this session." in page and "Hand back" in page


def test_claim_next_takes_the_longest_waiting(sup_client, core):
    for sid in ("q-1", "q-2"):
        async_to_sync(core.coord(sid).escalate)("help")
    async_to_sync(core.coord("q-1").take_over)("human:ann")  # someone was faster on q-1
    response = sup_client.post("/escalations/claim-next/")
    assert response["Location"] == "/sessions/q-2/"
    assert async_to_sync(core.coord("q-2").controller)() == "human:sup"


def test_viewer_sees_no_buttons_and_gets_403(client, viewer, core):
    async_to_sync(core.coord("s-7").escalate)("x")
    client.force_login(viewer)
    page = client.get("/sessions/s-7/").content.decode()
    assert "Take over" not in page and "Acting on it needs the supervisors role" in page
    assert "Take over the longest waiting" not in client.get("/").content.decode()
    for action in ("take-over", "release", "reassign", "reply", "note", "close", "hand-back"):
        assert post(client, action, "s-7", text="x", to_agent="a").status_code == 403
    assert client.post("/escalations/claim-next/").status_code == 403
    assert async_to_sync(core.coord("s-7").controller)() is None


def test_csrf_is_enforced_on_actions(supervisor, core):
    async_to_sync(core.coord("s-8").publish)(EventType.MESSAGE, {})
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(supervisor)
    assert strict.post("/act/take-over/s-8/").status_code == 403
    assert async_to_sync(core.coord("s-8").controller)() is None


def test_get_on_an_action_is_refused(sup_client):
    assert sup_client.get("/act/take-over/s-9/").status_code == 405


def bulk(client, action, session_ids, htmx=True, **fields):
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    data = {"action": action, "session_ids": session_ids, **fields}
    return client.post("/act-bulk/", data, **headers)


def test_bulk_release_gives_a_result_per_session_and_refuses_stale_rows(sup_client, core):
    atomic = core.atomic()
    async_to_sync(atomic.claim_handoff)("b-1", "billing")
    async_to_sync(atomic.claim_handoff)("b-2", "sales")
    async_to_sync(core.coord("b-3").publish)(EventType.MESSAGE, {})
    page = sup_client.get("/sessions/").content.decode()
    assert 'name="session_ids" value="b-1"' in page and 'name="owner:b-2" value="sales"' in page
    # b-2's row showed "tech", but sales holds it now: the stale row is refused, not forced
    response = bulk(
        sup_client,
        "release",
        ["b-1", "b-2", "b-3"],
        **{"owner:b-1": "billing", "owner:b-2": "tech", "owner:b-3": ""},
    )
    body = response.content.decode()
    assert response.status_code == 200 and "Release claims: 1 of 3 done." in body
    assert "Done: Released billing&#x27;s claim." in body
    assert "Refused: The claim changed since this page was drawn: it is now held by sales." in body
    assert "Refused: Nobody holds a claim on this session." in body
    assert core.owner("b-1") is None
    assert core.owner("b-2") == "sales"
    audit = AuditEntry.objects.order_by("session_id")
    assert [(a.session_id, a.action, a.outcome) for a in audit] == [
        ("b-1", "release", "done"),
        ("b-2", "release", "refused"),
        ("b-3", "release", "refused"),
    ]


def test_bulk_reassign_close_and_hand_back(sup_client, core):
    core.agent_reports_in("tech")  # reassign accepts agents the index knows
    for sid in ("r-1", "r-2"):
        async_to_sync(core.coord(sid).escalate)("help")
    async_to_sync(core.coord("r-2").take_over)("human:sup")
    body = bulk(sup_client, "reassign", ["r-1"], to_agent="tech").content.decode()
    assert "Reassign to…: 1 of 1 done." in body
    body = bulk(
        sup_client, "hand-back", ["r-1", "r-2"], to_agent="tech", **{"controller:r-2": "human:sup"}
    ).content.decode()
    assert "1 of 2 done." in body and "No human controls this session any more." in body
    assert core.owner("r-2") == "tech"
    body = bulk(sup_client, "close", ["r-1", "r-2", "r-1"]).content.decode()
    assert "Close: 2 of 2 done." in body  # a repeated id is acted on once
    assert [e.type for e in core.events("r-1")][-1] is EventType.SESSION_CLOSED


def test_bulk_without_javascript_and_bad_requests(sup_client, core):
    async_to_sync(core.coord("n-1").publish)(EventType.MESSAGE, {})
    page = bulk(sup_client, "close", ["n-1", "nope", "bad\nid"], htmx=False)
    body = page.content.decode()
    assert page.status_code == 200 and "<h1>Bulk action</h1>" in body
    assert "Close: 1 of 3 done." in body and 'href="/sessions/n-1/"' in body
    assert "does not exist" in body and "Bad session id" in body
    no_ids = bulk(sup_client, "close", [], htmx=False)
    assert no_ids.status_code == 400 and "Select at least one session." in no_ids.content.decode()
    assert "Choose what to do" in bulk(sup_client, "explode", ["n-1"]).content.decode()
    too_many = bulk(sup_client, "close", [f"x-{n}" for n in range(101)], htmx=False)
    assert too_many.status_code == 400 and "at most 100 at a time" in too_many.content.decode()
    # n-1 done, "nope" refused; a malformed id is refused before it reaches the audit log
    assert sorted(AuditEntry.objects.values_list("session_id", "outcome")) == [
        ("n-1", "done"),
        ("nope", "refused"),
    ]


def test_bulk_needs_the_supervisor_role_and_csrf(client, viewer, supervisor, core):
    async_to_sync(core.coord("v-1").publish)(EventType.MESSAGE, {})
    client.force_login(viewer)
    assert "data-bulk-select" not in client.get("/sessions/").content.decode()
    assert bulk(client, "close", ["v-1"]).status_code == 403
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(supervisor)
    assert strict.post("/act-bulk/", {"action": "close", "session_ids": ["v-1"]}).status_code == 403
    assert [e.type for e in core.events("v-1")] == [EventType.MESSAGE]


# transactional: the consumer's database_sync_to_async closes the connection it finds, which
# on PostgreSQL would be the connection holding a non-transactional test's transaction
@pytest.mark.django_db(transaction=True)
def test_other_pages_of_the_session_get_its_audit_trail_live(sup_client, supervisor, core):
    async_to_sync(core.coord("a-1").escalate)("x")

    async def scenario():
        # another supervisor's page of the same session, connected before the action
        page = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/session/a-1/")
        page.scope["user"] = supervisor
        connected, _ = await page.connect()
        assert connected
        try:
            await sync_to_async(post)(sup_client, "take-over", "a-1")
            text = ""
            async with asyncio.timeout(15):  # other live frames may come first
                while 'id="session-audit"' not in text:
                    text = await page.receive_from(timeout=10)
            assert 'hx-swap-oob="true"' in text
            assert '<td data-label="Who">sup</td><td data-label="Action">Take over</td>' in text
        finally:
            await page.disconnect()

    async_to_sync(scenario)()
