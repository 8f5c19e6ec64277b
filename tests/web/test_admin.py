"""Admin: audit log read-only, sessions from the index, shared-state edits with CAS."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.utils import timezone

from coordination import AgentCoordinator, EventType
from coordination.models import AuditEntry

pytestmark = pytest.mark.django_db


@pytest.fixture
def coord(redis_url, namespace):
    c = AgentCoordinator("s-admin", redis_url, namespace=namespace)
    async_to_sync(c.update_state)({"plan": "A", "count": 1})
    return c


def form_for(page: str) -> dict:
    """The fields the editor rendered, as a browser would submit them (boxes unticked)."""
    fields = {}
    for tag in re.findall(r"<input [^>]*>", page):
        name = re.search(r'name="([^"]*)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name and 'type="checkbox"' not in tag and 'type="submit"' not in tag:
            fields[name.group(1)] = html.unescape(value.group(1)) if value else ""
    for name, text in re.findall(r'<textarea name="([^"]+)"[^>]*>\n?([^<]*)</textarea>', page):
        fields[name] = html.unescape(text)
    fields.pop("csrfmiddlewaretoken", None)
    return fields


def row_of(data: dict, key: str) -> str:
    """The formset prefix of the row that edits ``key`` ("state-3")."""
    for name, value in data.items():
        if name.endswith("-key") and name.startswith("state-") and json.loads(value) == key:
            return name[: -len("-key")]
    raise AssertionError(f"no row for {key!r}")


def test_sessions_list_and_state_edit_publishes_and_audits(staff, coord):
    listing = staff.get("/admin/coordination/sessions/").content.decode()
    assert "s-admin" in listing and "Edit state" in listing
    url = "/admin/coordination/sessions/s-admin/state/"
    data = form_for(staff.get(url).content.decode())
    data[f"{row_of(data, 'plan')}-value"] = '{"steps": [1, 2]}'
    data[f"{row_of(data, 'count')}-delete"] = "on"
    data["new-key"], data["new-value"] = "owner_note", '"vip"'
    response = staff.post(url, data)
    assert response.status_code == 302
    assert async_to_sync(coord.get_all_state)() == {"plan": {"steps": [1, 2]}, "owner_note": "vip"}
    changed = [e for e in async_to_sync(coord.events)() if e.type is EventType.STATE_CHANGED][-3:]
    assert {e.data["key"] for e in changed} == {"plan", "count", "owner_note"}
    assert all(e.data["by"] == "human:boss" for e in changed)
    entry = AuditEntry.objects.get(action="state_edit")
    assert entry.before["plan"] == "A" and entry.after["plan"] == {"steps": [1, 2]}


def test_invalid_json_is_a_form_error(staff, coord):
    url = "/admin/coordination/sessions/s-admin/state/"
    data = form_for(staff.get(url).content.decode())
    data[f"{row_of(data, 'plan')}-value"] = "{not json"
    response = staff.post(url, data)
    assert response.status_code == 400
    assert "Not valid JSON" in response.content.decode()
    assert async_to_sync(coord.get_state)("plan") == "A"


def test_stale_edit_is_refused_showing_both_values(staff, coord):
    url = "/admin/coordination/sessions/s-admin/state/"
    data = form_for(staff.get(url).content.decode())
    async_to_sync(coord.set_state)("plan", "B")  # an agent changes it meanwhile
    data[f"{row_of(data, 'plan')}-value"] = '"C"'
    body = staff.post(url, data).content.decode()
    assert (
        "Changed by someone else" in body
        and "Yours: &quot;C&quot;" in body
        and "now: &quot;B&quot;" in body
    )
    assert async_to_sync(coord.get_state)("plan") == "B"
    assert AuditEntry.objects.get().outcome == "refused"


def test_audit_is_read_only_in_admin_and_pruned_by_command(staff, supervisor):
    entry = AuditEntry.objects.create(
        actor=supervisor, actor_name="sup", action="note", session_id="s"
    )
    assert staff.get(f"/admin/coordination/auditentry/{entry.pk}/change/").status_code == 200
    assert (
        staff.post(
            f"/admin/coordination/auditentry/{entry.pk}/delete/", {"post": "yes"}
        ).status_code
        == 403
    )
    AuditEntry.objects.filter(pk=entry.pk).update(created=timezone.now() - timedelta(days=40))
    call_command("prune_audit", "--older-than", "30")
    assert not AuditEntry.objects.exists()


def test_unknown_session_state_page_is_404(staff):
    assert staff.get("/admin/coordination/sessions/nope/state/").status_code == 404


def test_state_page_escapes_values(staff, coord):
    async_to_sync(coord.set_state)("x", "</textarea><script>alert(1)</script>")
    body = staff.get("/admin/coordination/sessions/s-admin/state/").content.decode()
    assert "<script>alert(1)</script>" not in body


def test_a_value_an_agent_wrote_around_the_core_is_shown_and_can_be_replaced(
    staff, coord, redis_sync
):
    # an agent holding REDIS_URL writes text that is not JSON straight into the state hash
    keys = coord.keys.session(coord.session_id)
    redis_sync.hset(keys.state, "plan", "not json <b>")
    redis_sync.hset(keys.versions, "count", "x")  # and a version that is not a number
    url = "/admin/coordination/sessions/s-admin/state/"
    page = staff.get(url)
    assert page.status_code == 200
    text = page.content.decode()
    assert "not json &lt;b&gt;" in text and "not JSON" in text and "<b>" not in text
    data = form_for(text)
    data[f"{row_of(data, 'plan')}-value"] = '"B"'
    data[f"{row_of(data, 'count')}-value"] = "1"  # unchanged
    assert staff.post(url, data).status_code == 302
    assert async_to_sync(coord.get_state)("plan") == "B"
