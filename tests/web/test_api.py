"""The JSON API: token auth, the same filters and pagination as the pages, permissions and
audit entries like the UI, per-session results for bulk actions."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.test import AsyncClient

from coordination import AgentCoordinator, AtomicOperations, EventType
from coordination.models import ApiToken, AuditEntry

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tokens(supervisor, viewer):
    return {
        "supervisor": ApiToken.issue(supervisor, "test")[1],
        "viewer": ApiToken.issue(viewer, "test")[1],
    }


class ApiClient:
    """AsyncClient sending the bearer token with each request (its constructor's
    ``headers`` do not reach ASGI requests)."""

    def __init__(self, token: str | None) -> None:
        self.client = AsyncClient()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def get(self, path, data=None):
        return await self.client.get(path, data, headers=self.headers)

    async def post(self, path, data=None, content_type="application/json"):
        return await self.client.post(path, data, content_type=content_type, headers=self.headers)


def client_for(token: str | None) -> ApiClient:
    return ApiClient(token)


@pytest.fixture
def seed(redis_url, namespace):
    async def seed(*session_ids: str, escalate: bool = False) -> None:
        for sid in session_ids:
            coord = AgentCoordinator(sid, redis_url, namespace=namespace)
            await coord.publish(EventType.MESSAGE, {"text": f"hello from {sid}"})
            await coord.set_state("step", 1)
            if escalate:
                await coord.escalate("needs a human")

    return seed


async def test_every_endpoint_needs_a_valid_token(tokens):
    for path in ("/api/v1/sessions/", "/api/v1/agents/", "/api/v1/escalations/"):
        assert (await client_for(None).get(path)).status_code == 401
        assert (await client_for("coord_wrong").get(path)).status_code == 401
        assert (await client_for(tokens["viewer"]).get(path)).status_code == 200
    anonymous = await client_for(None).post("/api/v1/interventions/close/s-1", {})
    assert anonymous.status_code == 401


async def test_a_token_of_an_inactive_user_is_refused(tokens, viewer):
    viewer.is_active = False
    await sync_to_async(viewer.save)()
    assert (await client_for(tokens["viewer"]).get("/api/v1/sessions/")).status_code == 401


async def test_schema_is_served_to_token_holders_and_signed_in_users(tokens, viewer):
    assert (await client_for(None).get("/api/v1/openapi.json")).status_code == 401
    response = await client_for(tokens["viewer"]).get("/api/v1/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/v1/sessions/" in paths and "/api/v1/bulk/{action}" in paths
    browser = AsyncClient()
    await browser.aforce_login(viewer)
    assert (await browser.get("/api/v1/openapi.json")).status_code == 200


async def test_list_filters_and_cursor_pages(tokens, seed):
    await seed("api-a1", "api-a2", "api-a3", "other-1")
    api = client_for(tokens["viewer"])
    first = (await api.get("/api/v1/sessions/", {"q": "api-", "limit": 2})).json()
    assert [s["session_id"] for s in first["items"]] == ["api-a1", "api-a2"]
    rest = (
        await api.get(
            "/api/v1/sessions/", {"q": "api-", "limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    assert [s["session_id"] for s in rest["items"]] == ["api-a3"] and rest["next_cursor"] is None
    active = (await api.get("/api/v1/sessions/", {"status": "active"})).json()
    assert len(active["items"]) == 4
    bad = await api.get("/api/v1/sessions/", {"status": "sleeping"})
    assert bad.status_code == 422


async def test_detail_with_state_and_events_after_an_id(tokens, seed):
    await seed("api/detail")  # a '/' in the id works in the path
    api = client_for(tokens["viewer"])
    detail = (await api.get("/api/v1/sessions/api/detail")).json()
    assert detail["session_id"] == "api/detail" and detail["state"] == {"step": 1}
    events = (await api.get("/api/v1/events/api/detail", {"limit": 1})).json()
    assert events["items"][0]["type"] == "message" and events["next_after"]
    after = (await api.get("/api/v1/events/api/detail", {"after": events["next_after"]})).json()
    assert [e["type"] for e in after["items"]] == ["state_changed"]
    missing = await api.get("/api/v1/sessions/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    bad_after = await api.get("/api/v1/events/api/detail", {"after": "not-an-id"})
    assert bad_after.status_code == 400 and "after" in bad_after.json()["detail"]


async def test_viewers_cannot_intervene_and_nothing_changes(tokens, seed):
    await seed("api-v", escalate=True)
    response = await client_for(tokens["viewer"]).post(
        "/api/v1/interventions/take-over/api-v", {}, content_type="application/json"
    )
    assert response.status_code == 403
    # ninja's AuthorizationError, answered by its handler in the API's error shape
    assert response.json() == {"detail": "This token's user may view sessions but not act on them."}
    escalations = (await client_for(tokens["viewer"]).get("/api/v1/escalations/")).json()
    assert escalations["count"] == 1 and escalations["items"][0]["status"] == "escalated"


async def test_interventions_are_audited_and_race_safe(tokens, seed):
    await seed("api-t", escalate=True)
    api = client_for(tokens["supervisor"])
    taken = await api.post(
        "/api/v1/interventions/take-over/api-t", {}, content_type="application/json"
    )
    assert taken.status_code == 200, taken.content
    body = taken.json()
    assert body["ok"] and body["session"]["controller"] == "human:sup"
    again = await api.post(
        "/api/v1/interventions/hand-back/api-t",
        {"to_agent": "billing", "expected_controller": "human:someone-else"},
        content_type="application/json",
    )
    assert again.status_code == 409 and not again.json()["ok"]
    entries = await sync_to_async(list)(
        AuditEntry.objects.filter(session_id="api-t").values_list("action", "outcome", "actor_name")
    )
    assert ("take_over", "done", "sup") in entries and ("hand_back", "refused", "sup") in entries


async def test_bulk_release_reports_per_session(tokens, seed, redis_url, namespace):
    await seed("bulk-1", "bulk-2", "bulk-3")
    ops = AtomicOperations(redis_url, namespace=namespace)
    await ops.claim_handoff("bulk-1", "billing")
    await ops.claim_handoff("bulk-2", "tech")
    response = await client_for(tokens["supervisor"]).post(
        "/api/v1/bulk/release",
        {"session_ids": ["bulk-1", "bulk-2", "bulk-3", "bulk-missing"]},
        content_type="application/json",
    )
    assert response.status_code == 200
    body = response.json()
    outcome = {r["session_id"]: r["ok"] for r in body["results"]}
    assert outcome == {"bulk-1": True, "bulk-2": True, "bulk-3": False, "bulk-missing": False}
    assert body["done"] == 2 and body["refused"] == 2
    assert await ops.get_handoff("bulk-1") is None and await ops.get_handoff("bulk-2") is None
    count = await sync_to_async(AuditEntry.objects.filter(action="release").count)()
    assert count == 4


async def test_bulk_reassign_without_an_agent_is_refused_once_and_nothing_is_tried(
    tokens, seed, redis_url, namespace
):
    await seed("bulk-a1", "bulk-a2")
    for action in ("reassign", "hand-back"):
        response = await client_for(tokens["supervisor"]).post(
            f"/api/v1/bulk/{action}",
            {"session_ids": ["bulk-a1", "bulk-a2"], "to_agent": "  "},
            content_type="application/json",
        )
        assert response.status_code == 400, response.content
        assert "Name the agent" in response.json()["detail"]
    # the page's rule, word for word: nothing was attempted, so nothing was audited
    assert await sync_to_async(AuditEntry.objects.count)() == 0


async def test_a_reason_given_through_the_api_reaches_the_audit_trail(tokens, seed):
    await seed("reason-1")
    response = await client_for(tokens["supervisor"]).post(
        "/api/v1/interventions/take-over/reason-1",
        {"reason": "VIP <customer>"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    entry = await sync_to_async(AuditEntry.objects.get)(action="take_over", session_id="reason-1")
    assert "VIP <customer>" in str(entry.detail), entry.detail
    too_long = await client_for(tokens["supervisor"]).post(
        "/api/v1/interventions/close/reason-1",
        {"reason": "x" * 501},
        content_type="application/json",
    )
    assert too_long.status_code == 422 and "reason" in too_long.content.decode()


async def test_bad_bodies_get_a_clear_error(tokens):
    api = client_for(tokens["supervisor"])
    too_many = await api.post(
        "/api/v1/bulk/close",
        {"session_ids": [f"s-{n}" for n in range(101)]},
        content_type="application/json",
    )
    assert too_many.status_code == 422 and "session_ids" in too_many.content.decode()
    not_json = await api.post("/api/v1/bulk/close", "{nope", content_type="application/json")
    assert not_json.status_code in (400, 422)
    unknown = await api.post(
        "/api/v1/bulk/explode", {"session_ids": ["a"]}, content_type="application/json"
    )
    assert unknown.status_code == 422


def test_create_api_token_prints_a_token_and_stores_only_its_digest(supervisor, capsys):
    call_command("create_api_token", "sup", "--name", "ci")
    token = capsys.readouterr().out.strip()
    assert token.startswith("coord_")
    row = ApiToken.objects.get(name="ci")
    assert row.digest == ApiToken.hash(token) and token not in (row.digest, row.prefix)


async def test_each_intervention_is_one_json_log_line_with_session_and_actor(tokens, seed, caplog):
    import json
    import logging

    from coordination.foundation.json_logs import JsonFormatter

    await seed("api-log", escalate=True)
    with caplog.at_level(logging.INFO, logger="coordination.audit"):
        await client_for(tokens["supervisor"]).post("/api/v1/interventions/take-over/api-log", {})
    lines = [JsonFormatter().format(r) for r in caplog.records if r.name == "coordination.audit"]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["session_id"] == "api-log" and entry["actor"] == "sup"
    assert entry["action"] == "take_over" and entry["outcome"] == "done"
