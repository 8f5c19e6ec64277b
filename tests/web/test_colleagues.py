"""One rule for a session a colleague has taken over (supervision/colleagues.py): the session
page offers only a note, and the page's action URLs, bulk actions (page and API) and the API's
interventions refuse everything else, naming who holds it."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Group, User
from django.test import Client

from coordination import AgentCoordinator, EventType
from coordination.core import SessionSummary
from coordination.models import ApiToken, AuditEntry
from coordination.supervision.colleagues import colleague_holds, offered_actions

pytestmark = pytest.mark.django_db


@pytest.fixture
def colleague(supervisor):
    user = User.objects.create_user("ann", password="pw-ann-123456")
    user.groups.add(Group.objects.get(name="supervisors"))
    return user


@pytest.fixture
def taken(redis_url, namespace):
    """Session c-1, escalated and taken over by ann; c-2 taken over by sup."""
    for sid, who in (("c-1", "human:ann"), ("c-2", "human:sup")):
        coord = AgentCoordinator(sid, redis_url, namespace=namespace)
        async_to_sync(coord.escalate)("help")
        async_to_sync(coord.take_over)(who)
    return AgentCoordinator("c-1", redis_url, namespace=namespace)


def _summary(**fields) -> SessionSummary:
    base = dict(
        session_id="x",
        status="human",
        owner=None,
        controller=None,
        last_event_id=None,
        last_event_type=None,
        last_activity=None,
        created=None,
    )
    return SessionSummary(**{**base, **fields})


def test_the_rule():
    mine = _summary(controller="human:sup")
    theirs = _summary(controller="human:ann")
    free = _summary(status="escalated", claim_agent="billing")
    assert offered_actions(mine, "human:sup") == {"hand-back", "reply", "note", "close"}
    assert offered_actions(theirs, "human:sup") == {"note"}
    assert offered_actions(free, "human:sup") == {
        "take-over",
        "reassign",
        "release",
        "note",
        "close",
    }
    assert offered_actions(_summary(status="closed"), "human:sup") == {"note"}
    for action in ("take-over", "take_over", "hand-back", "hand_back", "reply", "close"):
        assert colleague_holds(action, theirs, "human:sup") == "human:ann"
        assert colleague_holds(action, mine, "human:sup") is None
        assert colleague_holds(action, free, "human:sup") is None
    assert colleague_holds("note", theirs, "human:sup") is None


def test_the_page_offers_only_a_note_on_a_colleagues_session(client, supervisor, taken):
    client.force_login(supervisor)
    body = client.get("/sessions/c-1/").content.decode()
    actions = body.split('id="session-actions"')[1].split("</section>")[0]
    assert "ann</span> controls this session: only they act on it" in actions
    assert set(re.findall(r"/act/([a-z-]+)/c-1/", actions)) == {"note"}
    own = client.get("/sessions/c-2/").content.decode().split('id="session-actions"')[1]
    own = own.split("</section>")[0]
    assert set(re.findall(r"/act/([a-z-]+)/c-2/", own)) == {"hand-back", "reply", "note", "close"}


def test_page_actions_and_bulk_refuse_what_the_page_does_not_offer(client, supervisor, taken):
    client.force_login(supervisor)
    for action, data in (
        ("take-over", {}),
        ("hand-back", {"to_agent": ""}),
        ("reply", {"text": "hi"}),
        ("close", {}),
    ):
        body = client.post(f"/act/{action}/c-1/", data, HTTP_HX_REQUEST="true").content.decode()
        assert "Taken over by ann just now. Only they act on it" in body, action
    body = client.post(
        "/act-bulk/",
        {"action": "close", "session_ids": ["c-1", "c-2"]},
        HTTP_HX_REQUEST="true",
    ).content.decode()
    assert "Close: 1 of 2 done." in body and "Taken over by ann" in body
    assert client.post("/act/note/c-1/", {"text": "fyi"}, HTTP_HX_REQUEST="true").status_code == 200
    types = [e.type for e in async_to_sync(taken.events)()]
    assert EventType.SESSION_CLOSED not in types and types[-1] is EventType.NOTE
    refused = AuditEntry.objects.filter(session_id="c-1", outcome="refused")
    assert refused.count() == 5


def _api(token: str, path: str, data: dict):
    return Client().post(
        path, data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )


def test_the_api_refuses_the_same(supervisor, colleague, taken):
    token = ApiToken.issue(supervisor, "test")[1]
    for action in ("hand-back", "take-over", "close"):
        response = _api(token, f"/api/v1/interventions/{action}/c-1", {})
        assert response.status_code == 409, action
        assert response.json()["message"].startswith("Taken over by ann"), action
    # (bulk hand-back needs a target agent, as on the page: close is the bulk action here)
    bulk = _api(token, "/api/v1/bulk/close", {"session_ids": ["c-1", "c-2"]}).json()
    assert bulk["done"] == 1 and bulk["refused"] == 1
    assert {r["session_id"]: r["ok"] for r in bulk["results"]} == {"c-1": False, "c-2": True}
    assert _api(token, "/api/v1/interventions/note/c-1", {"text": "fyi"}).status_code == 200
    # the colleague herself may act
    theirs = ApiToken.issue(colleague, "test")[1]
    assert _api(theirs, "/api/v1/interventions/hand-back/c-1", {}).status_code == 200


# -- the reason given for take-over, release, reassign and close ------------------------------


def test_a_reason_travels_to_the_event_and_the_audit_trail(
    client, supervisor, redis_url, namespace
):
    from coordination import AtomicOperations

    client.force_login(supervisor)
    coord = AgentCoordinator("r-1", redis_url, namespace=namespace)
    async_to_sync(coord.escalate)("help")
    hostile = "<b>VIP</b> customer asked twice"

    def act(action, **data):
        return client.post(f"/act/{action}/r-1/", data, HTTP_HX_REQUEST="true").content.decode()

    assert "You now control this session." in act("take-over", reason=hostile)
    taken = [e for e in async_to_sync(coord.events)() if e.type is EventType.HUMAN_TAKEOVER][-1]
    assert taken.data["reason"] == hostile
    act("hand-back", to_agent="")
    assert async_to_sync(AtomicOperations(redis_url, namespace=namespace).claim_handoff)(
        "r-1", "billing"
    )
    act("release", expected_owner="billing", reason="agent is stuck")
    body = act("close", reason="duplicate of r-0")
    closed = async_to_sync(coord.events)()[-1]
    assert closed.type is EventType.SESSION_CLOSED and closed.data["reason"] == "duplicate of r-0"
    details = list(
        AuditEntry.objects.filter(session_id="r-1").order_by("id").values_list("detail", flat=True)
    )
    assert details[0].endswith(f"Reason: {hostile}")
    assert details[2].endswith("Reason: agent is stuck")
    assert details[3].endswith("Reason: duplicate of r-0")
    # shown in the audit trail, escaped
    audit = body.split('id="session-audit"')[1].split("</section>")[0]
    assert "Reason: duplicate of r-0" in audit and "&lt;b&gt;VIP&lt;/b&gt;" in audit
    assert "<b>VIP</b>" not in audit


def test_a_reason_too_long_is_refused(client, supervisor, redis_url, namespace):
    client.force_login(supervisor)
    coord = AgentCoordinator("r-2", redis_url, namespace=namespace)
    async_to_sync(coord.escalate)("help")
    body = client.post(
        "/act/take-over/r-2/", {"reason": "x" * 501}, HTTP_HX_REQUEST="true"
    ).content.decode()
    assert "The reason is 501 characters; the limit is 500." in body
    assert async_to_sync(coord.controller)() is None
