"""The admin's shared-state editor as a Django formset: its own admin URL, listed in the
admin index and sidebar; hints a person can act on; and hostile input (huge and deeply nested
values, lone surrogates, forged management-form counts and hidden fields) refused with a form
error, never a 500, and never a partial write."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync

from coordination import AgentCoordinator
from coordination.models import AuditEntry

from .test_admin import form_for, row_of

pytestmark = pytest.mark.django_db

URL = "/admin/coordination/sessions/s-form/state/"


@pytest.fixture
def coord(redis_url, namespace):
    c = AgentCoordinator("s-form", redis_url, namespace=namespace)
    async_to_sync(c.update_state)({"plan": "A", "priority": "low"})
    return c


def state(coord) -> dict:
    return async_to_sync(coord.get_all_state)()


def page_form(staff) -> dict:
    return form_for(staff.get(URL).content.decode())


def post_value(staff, key: str, text: str):
    data = page_form(staff)
    data[f"{row_of(data, key)}-value"] = text
    return staff.post(URL, data)


# -- where it lives -------------------------------------------------------------------------------


def test_the_editor_has_its_own_admin_url_listed_in_the_index_and_sidebar(staff, coord):
    index = staff.get("/admin/").content.decode()
    assert 'href="/admin/coordination/sessions/">Sessions (live, from Redis)</a>' in index
    # the sidebar of any admin page (Django's nav_sidebar) lists it too
    audit = staff.get("/admin/coordination/auditentry/").content.decode()
    sidebar = audit[audit.index('id="nav-sidebar"') :]
    assert 'href="/admin/coordination/sessions/"' in sidebar
    app_page = staff.get("/admin/coordination/").content.decode()
    assert 'href="/admin/coordination/sessions/"' in app_page
    listing = staff.get("/admin/coordination/sessions/").content.decode()
    assert 'href="/admin/coordination/sessions/s-form/state/"' in listing
    # the old address hung off the audit log; it edits nothing now
    old = staff.get("/admin/coordination/auditentry/sessions/s-form/state/")
    assert b"state-TOTAL_FORMS" not in old.content


def test_staff_without_the_supervisors_role_sees_sessions_but_cannot_edit(
    client, django_user_model, coord
):
    user = django_user_model.objects.create_user("clerk", password="pw-clerk-123456", is_staff=True)
    client.force_login(user)
    assert client.get("/admin/coordination/sessions/").status_code == 200
    assert client.get(URL).status_code == 403
    assert client.post(URL, {"new-key": "x", "new-value": "1"}).status_code == 403
    assert "x" not in state(coord)


def test_people_who_are_not_staff_are_sent_to_the_admin_login(client, supervisor, coord):
    client.force_login(supervisor)
    for url in ("/admin/coordination/sessions/", URL):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


# -- hints ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "hint"),
    [
        ("high", "write strings in double quotes, &quot;high&quot;"),
        ("  very high ", "write strings in double quotes, &quot;very high&quot;"),
        ("'high'", "write strings in double quotes, &quot;high&quot;"),
        ("True", "write true (JSON&#x27;s spelling of True)"),
        ("None", "write null (JSON&#x27;s spelling of None)"),
        ("", "the value is empty (write &quot;&quot; for an empty string, or tick delete)"),
        ('{"a": 1', "Not valid JSON: Expecting &#x27;,&#x27; delimiter (line 1, column 8)"),
    ],
)
def test_not_json_gets_a_hint_a_person_can_act_on(staff, coord, typed, hint):
    response = post_value(staff, "priority", typed)
    assert response.status_code == 400
    body = response.content.decode()
    assert hint in body
    if typed.strip() and typed[0] != "{":
        assert "Expecting value" not in body
    assert state(coord)["priority"] == "low"


def test_the_hint_reaches_the_new_key_row_too(staff, coord):
    data = page_form(staff)
    data["new-key"], data["new-value"] = "urgency", "high"
    body = staff.post(URL, data).content.decode()
    assert "write strings in double quotes, &quot;high&quot;" in body
    assert "urgency" not in state(coord)


def test_the_typed_text_is_kept_after_an_error(staff, coord):
    body = post_value(staff, "priority", "high <b>").content.decode()
    assert "high &lt;b&gt;</textarea>" in body and "<b>" not in body


# -- hostile input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('"' + "x" * 1_100_000 + '"', "Not accepted"),  # over the core's 1 MB value limit
        ("[" * 10_000 + "]" * 10_000, "nested too deeply"),  # past the parser
        ("[" * 150 + "]" * 150, "Not accepted"),  # parses; deeper than the core stores
        ('{"a": ' * 3000 + "1" + "}" * 3000, "nested too deeply"),
        ("9" * 5000, "Not accepted"),  # past Python's integer conversion limit
        ("NaN", "Not accepted"),
    ],
    ids=["huge", "deep-list", "too-deep", "deep-object", "long-int", "nan"],
)
def test_hostile_values_are_form_errors_and_nothing_is_written(staff, coord, text, error):
    versions = async_to_sync(coord.get_state_versions)()
    data = page_form(staff)
    data[f"{row_of(data, 'priority')}-value"] = text
    data[f"{row_of(data, 'plan')}-value"] = '"B"'  # a good change beside it: not written either
    response = staff.post(URL, data)
    assert response.status_code == 400
    assert error in response.content.decode()
    assert async_to_sync(coord.get_state_versions)() == versions


def test_lone_surrogates_round_trip_and_the_page_still_renders(staff, coord):
    async_to_sync(coord.set_state)("odd", "a\ud800b")  # JSON escapes can hold one
    page = staff.get(URL)
    assert page.status_code == 200
    data = form_for(page.content.decode())
    assert data[f"{row_of(data, 'odd')}-value"] == '"a\\ud800b"'  # shown escaped
    # saved unchanged: nothing to write
    assert staff.post(URL, data).status_code == 302
    assert state(coord)["odd"] == "a\ud800b"
    # typed as a JSON escape: stored exactly; the audit keeps a printable copy
    data = form_for(staff.get(URL).content.decode())
    data[f"{row_of(data, 'odd')}-value"] = '["\\udfff", "ok"]'
    assert staff.post(URL, data).status_code == 302
    assert state(coord)["odd"] == ["\udfff", "ok"]
    entry = AuditEntry.objects.get(action="state_edit")
    assert entry.after == {"odd": ["\ufffd", "ok"]} and entry.before == {"odd": "a\ufffdb"}
    assert staff.get(URL).status_code == 200
    assert staff.get(f"/admin/coordination/auditentry/{entry.pk}/change/").status_code == 200


def test_raw_surrogate_bytes_in_the_form_are_replaced_not_a_500(staff, coord):
    """A lone surrogate's UTF-8 bytes (never valid UTF-8) in a posted value: Django decodes
    them as U+FFFD, and the value saves as that text."""
    data = page_form(staff)
    field = f"{row_of(data, 'priority')}-value"
    others = urlencode({k: v for k, v in data.items() if k != field})
    body = f"{others}&{field}=%22%ED%A0%80%22"
    response = staff.generic("POST", URL, body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 302
    assert state(coord)["priority"] == "\ufffd" * 3
    assert staff.get(URL).status_code == 200


@pytest.mark.parametrize(
    ("total", "initial", "saved"),
    [
        ("1000000000", "2", False),  # more forms than any page has: refused before building
        ("1001", "1001", False),
        ("abc", "2", False),
        ("", "", False),
        ("5", "5", False),  # more rows claimed than sent: the missing ones are damaged
        ("-5", "0", False),  # Django would read no row at all
        ("2", "-1", False),
        # every row counted as new: each still carries its key and version, and the write is
        # the same compare-and-set
        ("2", "0", True),
    ],
)
def test_forged_management_form_counts_write_nothing_unchecked(staff, coord, total, initial, saved):
    versions = async_to_sync(coord.get_state_versions)()
    data = page_form(staff)
    data[f"{row_of(data, 'plan')}-value"] = '"B"'
    data["state-TOTAL_FORMS"], data["state-INITIAL_FORMS"] = total, initial
    response = staff.post(URL, data)
    current = async_to_sync(coord.get_state_versions)()
    if saved:
        assert response.status_code == 302 and current["plan"] == ("B", 2)
    else:
        assert response.status_code == 400 and current == versions


def test_a_missing_management_form_is_refused_with_a_message(staff, coord):
    data = {k: v for k, v in page_form(staff).items() if "_FORMS" not in k}
    response = staff.post(URL, data)
    assert response.status_code == 400
    assert "ManagementForm data is missing or has been tampered with" in response.content.decode()
    assert state(coord) == {"plan": "A", "priority": "low"}


def test_too_many_forms_are_refused_before_any_is_built(staff, coord):
    data = page_form(staff)
    data["state-TOTAL_FORMS"] = str(10**9)
    response = staff.post(URL, data)
    assert response.status_code == 400
    assert "Please submit at most 1000 forms." in response.content.decode()


@pytest.mark.parametrize(
    ("field", "forged"),
    [
        ("key", "plan"),  # not JSON
        ("key", "42"),  # JSON, not a string
        ("key", '""'),
        ("key", "[" * 10_000),
        ("version", "-1"),
        ("version", "9" * 40),
        ("original", "{"),
        ("original", "[" * 10_000 + "]" * 10_000),
    ],
)
def test_forged_hidden_fields_are_a_damaged_form(staff, coord, field, forged):
    data = page_form(staff)
    row = row_of(data, "plan")
    data[f"{row}-{field}"] = forged
    data[f"{row}-value"] = '"B"'
    response = staff.post(URL, data)
    assert response.status_code == 400
    assert "The form was damaged" in response.content.decode()
    assert state(coord)["plan"] == "A"


def test_the_same_key_twice_is_a_damaged_form(staff, coord):
    data = page_form(staff)
    data[f"{row_of(data, 'priority')}-key"] = json.dumps("plan")
    response = staff.post(URL, data)
    assert response.status_code == 400 and "The form was damaged" in response.content.decode()


def test_a_new_key_that_exists_meanwhile_is_refused_on_the_new_key(staff, coord):
    data = page_form(staff)
    async_to_sync(coord.set_state)("fresh", 1)  # an agent adds it first
    data["new-key"], data["new-value"] = "fresh", "2"
    response = staff.post(URL, data)
    assert response.status_code == 400
    body = response.content.decode()
    assert "Changed by someone else" in body and 'value="fresh"' in body
    assert state(coord)["fresh"] == 1
    assert AuditEntry.objects.get().outcome == "refused"


def test_a_key_deleted_meanwhile_is_refused_at_the_top_of_the_page(staff, coord):
    data = page_form(staff)
    async_to_sync(coord.delete_state)("plan")
    data[f"{row_of(data, 'plan')}-value"] = '"B"'
    response = staff.post(URL, data)
    assert response.status_code == 400
    body = response.content.decode()
    assert "Changed by someone else" in body and "errorlist nonform" in body
    assert "plan" not in state(coord)


def test_a_value_that_is_not_json_left_as_it_is_does_not_block_other_edits(
    staff, coord, redis_sync
):
    keys = coord.keys.session(coord.session_id)
    redis_sync.hset(keys.state, "legacy", "plain\ntext")  # written around the core
    page = staff.get(URL).content.decode()
    assert "The stored value is not JSON" in page
    data = form_for(page)
    data[f"{row_of(data, 'legacy')}-value"] = "plain\r\ntext"  # as a browser sends it back
    data[f"{row_of(data, 'plan')}-value"] = '"B"'
    assert staff.post(URL, data).status_code == 302
    assert redis_sync.hget(keys.state, "legacy") in ("plain\ntext", b"plain\ntext")
    assert async_to_sync(coord.get_state)("plan") == "B"
