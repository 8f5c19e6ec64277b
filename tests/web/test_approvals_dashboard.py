"""Tool-call approvals on the dashboard and the API: the overview panel, the session page's
decision form, roles and CSRF, two supervisors deciding at once, bad input, expiry, the
audit trail, /metrics. Real Redis, one server and a Cluster (see conftest's ``redis_url``)."""

from __future__ import annotations

import asyncio
import io
import json
import re

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command
from django.template.loader import render_to_string
from django.test import AsyncClient, Client

from coordination import (
    AgentCoordinator,
    DecisionVerifier,
    EventType,
    SessionIndex,
)
from coordination.core import ApprovalExpired
from coordination.models import ApiToken, AuditEntry
from coordination.supervision import approvals as approval_actions
from coordination.supervision.interventions import Actor

pytestmark = pytest.mark.django_db(transaction=True)

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture
def coord(redis_url, namespace):
    def make(sid: str) -> AgentCoordinator:
        return AgentCoordinator(sid, redis_url, namespace=namespace)

    return make


def ask(coordinator: AgentCoordinator, action="refund", args=None, **kw):
    args = {"order": "A-1", "amount": 120} if args is None else args
    return async_to_sync(coordinator.request_approval)(action, args, **kw)


def decide_post(client, sid, approval_id, decision, htmx=True, **fields):
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    data = {"approval_id": approval_id, "decision": decision, **fields}
    return client.post(f"/act/decide/{sid}/", data, **headers)


@pytest.fixture
def sup_client(supervisor):
    client = Client()
    client.force_login(supervisor)
    return client


@pytest.fixture
def viewer_client(viewer):
    client = Client()
    client.force_login(viewer)
    return client


@pytest.fixture
def second_supervisor(db):
    user = User.objects.create_user("ann", password="pw-ann-123456")
    group, _ = Group.objects.get_or_create(name="supervisors")
    group.permissions.add(Permission.objects.get(codename="intervene"))
    user.groups.add(group)
    return user


def test_overview_lists_pending_approvals_oldest_first_escaped_with_sla(
    sup_client, coord, settings
):
    settings.COORDINATION_APPROVAL_SLA = 60
    first = ask(coord("ap-old"), "refund", {"note": HOSTILE}, agent_id="billing", reason=HOSTILE)
    ask(coord("ap-new"), "send_email", {"to": "a@example.com"}, agent_id="mailer")
    page = sup_client.get("/").content.decode()
    panel = page[page.index('id="pending-approvals"') :]
    panel = panel[: panel.index("</section>")]
    assert panel.index("ap-old") < panel.index("ap-new")  # oldest first
    assert '<span class="badge" data-approvals-count>2</span>' in panel
    assert "billing" in panel and "send_email" in panel and "SLA 60s" in panel
    assert "<script>" not in panel and "&lt;script&gt;" in panel
    assert f'data-approval="ap-old {first.approval_id}"' in panel
    assert 'href="/sessions/ap-old/"' in panel
    assert "Showing" not in panel


def test_overview_says_when_it_shows_fewer_than_exist(sup_client, coord):
    async def many():
        for i in range(23):
            await coord(f"many-{i:02}").request_approval("refund", {"i": i})

    async_to_sync(many)()
    page = sup_client.get("/").content.decode()
    assert "Showing 20 of 23" in page
    assert page.count('data-approval="many-') == 20
    assert "many-00" in page and "many-22" not in page  # the longest waiting are shown


def test_overview_marks_an_approval_over_its_sla(sup_client, coord, settings):
    settings.COORDINATION_APPROVAL_SLA = 0  # any wait is over it
    ask(coord("late-1"))
    page = sup_client.get("/").content.decode()
    row = re.search(r'<tr id="approval-[^"]+" class="([^"]*)"', page)
    assert row and row.group(1) == "over-sla"


def test_session_page_shows_pending_approval_on_top_with_the_decision_form(sup_client, coord):
    approval = ask(coord("sp-1"), "refund", {"amount": 500, "note": HOSTILE}, reason="over limit")
    page = sup_client.get("/sessions/sp-1/").content.decode()
    assert page.index('id="session-approvals"') < page.index('id="session-summary"')
    panel = page[page.index('id="session-approvals"') :]
    panel = panel[: panel.index("</section>")]
    assert "over limit" in panel and "&quot;amount&quot;: 500" in panel  # pretty-printed
    assert "<script>" not in panel
    assert 'value="approve"' in panel and 'value="reject"' in panel
    assert 'value="approve_edited"' in panel
    assert f'value="{approval.approval_id}"' in panel
    assert 'action="/act/decide/sp-1/"' in panel


def test_viewer_sees_approvals_read_only_and_is_refused(viewer_client, coord):
    approval = ask(coord("ro-1"))
    page = viewer_client.get("/sessions/ro-1/").content.decode()
    assert "refund" in page and 'value="approve"' not in page and "/act/decide/" not in page
    response = decide_post(viewer_client, "ro-1", approval.approval_id, "approve")
    assert response.status_code == 403
    assert async_to_sync(coord("ro-1").get_approval)(approval.approval_id).pending


def test_csrf_is_enforced_on_decisions(supervisor, coord):
    approval = ask(coord("csrf-1"))
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(supervisor)
    assert decide_post(strict, "csrf-1", approval.approval_id, "approve").status_code == 403
    assert async_to_sync(coord("csrf-1").get_approval)(approval.approval_id).pending
    assert strict.get("/act/decide/csrf-1/").status_code == 405


def test_approve_reaches_the_waiting_agent_and_is_audited(sup_client, coord, redis_url, namespace):
    agent = coord("ok-1")
    approval = ask(agent)

    async def agent_waits_while_supervisor_approves():
        waiting = asyncio.create_task(agent.wait_for_decision(approval.approval_id, timeout=20))
        response = await sync_to_async(decide_post)(
            sup_client, "ok-1", approval.approval_id, "approve", message="fine"
        )
        return response, await waiting

    response, decision = async_to_sync(agent_waits_while_supervisor_approves)()
    body = response.content.decode()
    assert response.status_code == 200 and "Approved refund." in body
    assert decision.approved and decision.by == "human:sup" and decision.message == "fine"
    assert decision.args is None
    assert "No approval is waiting on this session." in body  # the panel, redrawn
    entry = AuditEntry.objects.get(session_id="ok-1")
    assert entry.action == "approve" and entry.outcome == "done" and entry.actor_name == "sup"
    assert entry.before["status"] == "pending" and entry.after["status"] == "approved"
    assert entry.after["decided_by"] == "human:sup"
    counters = async_to_sync(SessionIndex(redis_url, namespace=namespace).counters)()
    assert counters.get("interventions:approve:done") == 1
    events = async_to_sync(agent.events)()
    assert events[-1].type == EventType.APPROVAL_DECIDED


def test_reject_with_a_message_without_javascript(sup_client, coord):
    approval = ask(coord("no-1"))
    response = decide_post(
        sup_client, "no-1", approval.approval_id, "reject", htmx=False, message="over budget"
    )
    assert response.status_code == 302 and response["Location"] == "/sessions/no-1/"
    decision = async_to_sync(coord("no-1").wait_for_decision)(approval.approval_id, timeout=5)
    assert not decision.approved and decision.message == "over budget"
    page = sup_client.get("/sessions/no-1/").content.decode()
    assert "Rejected refund." in page  # the flash message
    decided = page[page.index('class="approvals-decided"') :]
    assert "rejected" in decided and "human:sup" in decided and "over budget" in decided


def test_approve_with_edited_arguments(sup_client, coord):
    approval = ask(coord("ed-1"), "refund", {"amount": 500})
    response = decide_post(
        sup_client, "ed-1", approval.approval_id, "approve_edited", args='{"amount": 100}'
    )
    assert "Approved refund with edited arguments." in response.content.decode()
    decision = async_to_sync(coord("ed-1").wait_for_decision)(approval.approval_id, timeout=5)
    assert decision.approved and decision.args == {"amount": 100}
    # signed by the dashboard: an agent given `manage.py decision_key` can check it
    out = io.StringIO()
    call_command("decision_key", stdout=out)
    verifier = DecisionVerifier(out.getvalue().strip())
    checked = async_to_sync(coord("ed-1").wait_for_decision)(
        approval.approval_id, timeout=5, verifier=verifier
    )
    assert checked == decision and checked.signature


@pytest.mark.parametrize("htmx", [True, False])
def test_bad_json_arguments_answer_a_form_error_and_keep_the_text(sup_client, coord, htmx):
    approval = ask(coord("bad-1"), "refund", {"amount": 500})
    typed = '{"amount": 100, <oops>'
    response = decide_post(
        sup_client, "bad-1", approval.approval_id, "approve_edited", htmx=htmx, args=typed
    )
    body = response.content.decode()
    assert response.status_code == (200 if htmx else 400)
    assert "Not valid JSON" in body and "Nothing was decided" in body
    assert "{&quot;amount&quot;: 100, &lt;oops&gt;" in body  # what was typed, kept (escaped)
    assert async_to_sync(coord("bad-1").get_approval)(approval.approval_id).pending
    assert not AuditEntry.objects.filter(session_id="bad-1").exists()


def test_two_supervisors_at_once_one_decision(supervisor, second_supervisor, coord):
    """Both decisions run concurrently through the intervention step: exactly one is made,
    the other is refused naming the winner; both are audited."""
    approvals = [ask(coord(f"race-{i}")) for i in range(5)]

    async def race(approval):
        results = await asyncio.gather(
            approval_actions.decide(
                Actor(supervisor), approval.session_id, approval.approval_id, True
            ),
            approval_actions.decide(
                Actor(second_supervisor), approval.session_id, approval.approval_id, False
            ),
            return_exceptions=True,
        )
        return results

    for approval in approvals:
        results = async_to_sync(race)(approval)
        done = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if isinstance(r, approval_actions.ApprovalRefused)]
        assert len(done) == 1 and len(refused) == 1, results
        record = async_to_sync(coord(approval.session_id).get_approval)(approval.approval_id)
        winner = record.decided_by.removeprefix("human:")
        verb = "approved" if record.status == "approved" else "rejected"
        assert str(refused[0]).startswith(f"Already {verb} by {winner} ")
        assert refused[0].status == 409 and refused[0].decided_by == record.decided_by
        outcomes = sorted(
            AuditEntry.objects.filter(session_id=approval.session_id).values_list(
                "outcome", flat=True
            )
        )
        assert outcomes == ["done", "refused"]


def test_second_supervisor_on_the_page_is_told_who_decided(sup_client, second_supervisor, coord):
    approval = ask(coord("late-2"))
    ann = Client()
    ann.force_login(second_supervisor)
    assert decide_post(ann, "late-2", approval.approval_id, "reject").status_code == 200
    body = decide_post(sup_client, "late-2", approval.approval_id, "approve").content.decode()
    assert re.search(r"Already rejected by ann (just now|\d+s ago)\.", body)
    assert async_to_sync(coord("late-2").get_approval)(approval.approval_id).status == "rejected"


def test_expired_and_unknown_approvals_answer_clearly(sup_client, coord):
    agent = coord("exp-1")
    approval = ask(agent, expires_in=0.2)
    with pytest.raises(ApprovalExpired):  # the agent's wait passes the expiry and records it
        async_to_sync(agent.wait_for_decision)(approval.approval_id, timeout=10)
    body = decide_post(sup_client, "exp-1", approval.approval_id, "approve").content.decode()
    assert "expired before anyone decided" in body
    body = decide_post(sup_client, "exp-1", "no-such-approval", "approve").content.decode()
    assert "no such approval" in body
    body = decide_post(sup_client, "exp-1", "bad id!", "approve").content.decode()
    assert "Bad request" in body
    outcomes = set(AuditEntry.objects.filter(session_id="exp-1").values_list("outcome", flat=True))
    assert outcomes == {"refused"}


def test_metrics_report_waiting_approvals(client, settings, coord):
    settings.METRICS_TOKEN = "scrape-token-123"
    ask(coord("met-1"))
    ask(coord("met-2"))
    body = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-123").content.decode()
    assert "coordinator_approvals_waiting 2.0" in body
    oldest = re.search(r"^coordinator_approvals_oldest_wait_seconds (\S+)$", body, re.M)
    assert oldest and 0 <= float(oldest.group(1)) < 60


# -- the JSON API -------------------------------------------------------------------------


@pytest.fixture
def api(supervisor, viewer):
    def client(user):
        token = ApiToken.issue(user, "test")[1]
        return AsyncClient(), {"Authorization": f"Bearer {token}"}

    return {"sup": client(supervisor), "view": client(viewer)}


def test_api_lists_and_decides(api, coord, second_supervisor):
    first = ask(coord("api-1"), agent_id="billing")
    second = ask(coord("api-2"), "send_email", {"to": HOSTILE})

    async def run():
        client, headers = api["sup"]
        listed = await client.get("/api/v1/approvals/", {"limit": 1}, headers=headers)
        body = listed.json()
        assert listed.status_code == 200 and body["count"] == 2
        assert [a["approval_id"] for a in body["items"]] == [first.approval_id]
        more = await client.get(
            "/api/v1/approvals/", {"cursor": body["next_cursor"]}, headers=headers
        )
        assert [a["args"] for a in more.json()["items"]] == [{"to": HOSTILE}]
        one = await client.get("/api/v1/approvals/api-1", headers=headers)
        assert one.json()["items"][0]["agent_id"] == "billing"
        url = f"/api/v1/approvals/api-1/{first.approval_id}/decide"
        payload = {"approved": True, "message": "ok", "args": {"amount": 1}}
        done = await client.post(url, payload, content_type="application/json", headers=headers)
        assert done.status_code == 200, done.content
        assert done.json()["approval"]["decided_args"] == {"amount": 1}
        again = await client.post(
            url, {"approved": False}, content_type="application/json", headers=headers
        )
        assert again.status_code == 409
        assert again.json()["decided_by"] == "human:sup" and again.json()["approved"] is True
        assert "Already approved by sup" in again.json()["detail"]
        missing = await client.post(
            "/api/v1/approvals/api-1/nope/decide",
            {"approved": True},
            content_type="application/json",
            headers=headers,
        )
        assert missing.status_code == 404
        viewer, viewer_headers = api["view"]
        refused = await viewer.post(
            f"/api/v1/approvals/api-2/{second.approval_id}/decide",
            {"approved": True},
            content_type="application/json",
            headers=viewer_headers,
        )
        assert refused.status_code == 403
        seen = await viewer.get("/api/v1/approvals/", headers=viewer_headers)
        assert seen.status_code == 200 and seen.json()["count"] == 1
        unknown = await client.get("/api/v1/approvals/no-such-session", headers=headers)
        assert unknown.status_code == 404
        anonymous = await AsyncClient().get("/api/v1/approvals/")
        assert anonymous.status_code == 401

    async_to_sync(run)()
    assert async_to_sync(coord("api-2").get_approval)(second.approval_id).pending


def test_api_answers_410_for_an_expired_approval(api, coord):
    agent = coord("api-exp")
    approval = ask(agent, expires_in=0.2)
    with pytest.raises(ApprovalExpired):
        async_to_sync(agent.wait_for_decision)(approval.approval_id, timeout=10)

    async def run():
        client, headers = api["sup"]
        return await client.post(
            f"/api/v1/approvals/api-exp/{approval.approval_id}/decide",
            json.dumps({"approved": True}),
            content_type="application/json",
            headers=headers,
        )

    response = async_to_sync(run)()
    assert response.status_code == 410 and "expired" in response.json()["detail"]


def test_api_refuses_edited_arguments_with_a_rejection(api, coord):
    approval = ask(coord("api-rj"))

    async def run():
        client, headers = api["sup"]
        return await client.post(
            f"/api/v1/approvals/api-rj/{approval.approval_id}/decide",
            {"approved": False, "args": {"x": 1}},
            content_type="application/json",
            headers=headers,
        )

    response = async_to_sync(run)()
    assert response.status_code == 400
    assert async_to_sync(coord("api-rj").get_approval)(approval.approval_id).pending


def test_large_arguments_are_cut_and_not_offered_for_editing(sup_client, coord):
    ask(coord("big-1"), "upload", {"blob": "x" * 40_000})
    page = sup_client.get("/sessions/big-1/").content.decode()
    assert "too large to edit here" in page and 'value="approve_edited"' not in page
    assert 'value="approve"' in page  # plain approval is still offered
    panel = page[page.index('id="session-approvals"') :]
    panel = panel[: panel.index("</section>")]
    assert 16 <= panel.count("x" * 1000) <= 17  # the body is cut at 16 KiB
    assert "Arguments cut at" in page


def test_records_written_around_the_core_do_not_break_the_pages(sup_client, coord):
    agent = coord("junk-1")
    ask(agent)
    key = agent.keys.session("junk-1").approvals
    junk = {
        "not-json": "{{{",
        "a-list": "[1, 2]",
        "bad-status": json.dumps({"id": "bad-status", "status": "maybe"}),
        "odd-fields": json.dumps(
            {"id": "odd-fields", "status": "pending", "action": 5, "requested_ms": "soon"}
        ),
    }

    async def write_junk():
        await agent.call(agent.redis.hset(key, mapping=junk))

    async_to_sync(write_junk)()
    page = sup_client.get("/sessions/junk-1/")
    assert page.status_code == 200 and "refund" in page.content.decode()
    assert sup_client.get("/").status_code == 200


def test_each_decision_is_one_json_log_line(sup_client, coord, caplog):
    import logging

    from coordination.foundation.json_logs import JsonFormatter

    approval = ask(coord("log-1"))
    with caplog.at_level(logging.INFO, logger="coordination.audit"):
        decide_post(sup_client, "log-1", approval.approval_id, "reject", message="no")
        decide_post(sup_client, "log-1", approval.approval_id, "approve")
    lines = [
        json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if r.name == "coordination.audit"
    ]
    assert [(e["action"], e["outcome"]) for e in lines] == [
        ("reject", "done"),
        ("approve", "refused"),
    ]
    assert all(e["session_id"] == "log-1" and e["actor"] == "sup" for e in lines)


def test_a_row_past_its_expiry_says_so_before_anyone_records_it(coord):
    from coordination.dashboard.approvals import approval_row

    approval = ask(coord("exp-row"), expires_in=30)
    assert not approval_row(approval, now=approval.requested_at + 1)["expired_unrecorded"]
    row = approval_row(approval, now=approval.expires_at + 1)
    assert row["expired_unrecorded"]
    html = render_to_string(
        "coordination/_approvals.html#overview-approvals",
        {"approvals": [row], "approvals_total": 1},
    )
    assert '<span class="tag">expired</span>' in html


@pytest.mark.parametrize("htmx", [True, False])
def test_a_malformed_session_id_answers_4xx(sup_client, htmx):
    for sid in ("bad%01id", "x" * 300):
        response = decide_post(sup_client, sid, "abc", "approve", htmx=htmx)
        assert response.status_code == 400, sid
        assert "Bad session id" in response.content.decode()


def test_a_flood_of_requests_shows_the_oldest_twenty_and_says_how_many_more(
    sup_client, redis_url, namespace
):
    coord = AgentCoordinator("s-flood", redis_url, namespace=namespace)
    for n in range(45):
        async_to_sync(coord.request_approval)(f"tool{n}", {"n": n, "blob": "x" * 2000})
    page = sup_client.get("/sessions/s-flood/").content.decode()
    panel = re.search(r'<section id="session-approvals".*?</section>', page, re.S).group(0)
    assert panel.count('name="approval_id"') == 20
    assert "25 more pending" in panel and "45 pending" in panel
    assert "tool0" in panel and "tool44" not in panel
