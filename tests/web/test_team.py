"""The Team page (/team/, coordination/dashboard/team.py): staff invite people with a one-time
set-password link, change roles and deactivate users; every change is audited; the rules hold
on the server whatever the form says."""

from __future__ import annotations

import re
from html import unescape

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client, RequestFactory

from coordination.dashboard import team
from coordination.models import AuditEntry

from ..conftest import redis_url_of_kind

pytestmark = pytest.mark.django_db

# The team page reads and writes only the database: one Redis kind is enough (the autouse
# settings fixture still points the cache at a test namespace).
redis_url = pytest.fixture(params=["single"])(redis_url_of_kind)

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def boss(staff) -> User:
    return User.objects.get(username="boss")


def user(name: str) -> User:
    return User.objects.get(username=name)


def role_of(name: str) -> str:
    return team.role_of(User.objects.prefetch_related("groups").get(username=name))


def invite(client: Client, username: str, role: str = "viewer"):
    return client.post("/team/invite/", {"username": username, "role": role})


def link_in(response) -> str:
    match = re.search(
        r'id="invite-link-value" class="mono" readonly value="([^"]+)"', response.content.decode()
    )
    assert match, "no set-password link on the page"
    return unescape(match.group(1))


# --- who may see and act -------------------------------------------------------------------


@pytest.mark.parametrize("who", ["viewer", "supervisor"])
def test_viewers_and_supervisors_are_refused_page_and_actions(client, request, who, boss):
    member = request.getfixturevalue(who)
    other = User.objects.create_user("someone")
    client.force_login(member)
    assert client.get("/team/").status_code == 403
    assert client.get("/team/", **HX).status_code == 403
    assert invite(client, "intruder", "supervisor").status_code == 403
    assert not User.objects.filter(username="intruder").exists()
    # promoting themselves, or anyone, to staff
    assert client.post(f"/team/{member.pk}/role/", {"role": "staff"}).status_code == 403
    assert client.post(f"/team/{other.pk}/role/", {"role": "supervisor"}, **HX).status_code == 403
    assert client.post(f"/team/{boss.pk}/active/", {"active": "0"}).status_code == 403
    assert client.post(f"/team/{other.pk}/link/").status_code == 403
    assert role_of(member.username) == who and user("boss").is_active
    assert role_of("someone") == "viewer"
    assert not AuditEntry.objects.filter(action__startswith="team_").exists()


def test_signed_out_visitors_are_sent_to_sign_in(client):
    response = client.get("/team/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    response = client.post("/team/invite/", {"username": "x", "role": "viewer"})
    assert response.status_code == 302 and not User.objects.filter(username="x").exists()


def test_staff_see_the_page_and_the_nav_link(staff, viewer, supervisor):
    body = staff.get("/team/").content.decode()
    assert 'href="/team/" aria-current="page">Team</a>' in body
    for name, label in (("view", "Viewer"), ("sup", "Supervisor"), ("boss", "Staff")):
        row = re.search(rf'<tr id="team-user-{user(name).pk}".*?</tr>', body, re.S).group(0)
        assert f'class="team-role">{label}' in row
    # no role form on one's own row
    own = re.search(rf'<tr id="team-user-{user("boss").pk}".*?</tr>', body, re.S).group(0)
    assert "<form" not in own and "Your own account" in own


def test_posts_without_a_csrf_token_are_refused(boss, viewer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(boss)
    assert client.post(f"/team/{viewer.pk}/role/", {"role": "supervisor"}).status_code == 403
    assert client.post("/team/invite/", {"username": "csrf-less"}).status_code == 403
    assert role_of("view") == "viewer" and not User.objects.filter(username="csrf-less").exists()


# --- invitations and the one-time link -----------------------------------------------------


def test_invite_creates_the_user_with_the_role_and_a_link_that_works_once(staff):
    response = invite(staff, "carol", "supervisor")
    assert response.status_code == 200
    body = response.content.decode()
    assert "This link is shown once" in body
    link = link_in(response)
    carol = user("carol")
    assert role_of("carol") == "supervisor" and carol.has_perm("coordination.intervene")
    assert not carol.has_usable_password() and carol.is_active
    # the link is in that response only
    assert link not in staff.get("/team/").content.decode()

    visitor = Client()  # signed out: the invited person's browser
    path = link.removeprefix("http://testserver")
    first = visitor.get(path)
    assert first.status_code == 302  # Django moves the token into the session
    form_url = first["Location"]
    assert "Set your password" in visitor.get(form_url).content.decode()
    done = visitor.post(
        form_url, {"new_password1": "a-long-pass-4567", "new_password2": "a-long-pass-4567"}
    )
    assert done.status_code == 302 and done["Location"] == "/login/"
    assert user("carol").check_password("a-long-pass-4567")
    assert visitor.login(username="carol", password="a-long-pass-4567")

    # second use: refused, and the password stays
    again = Client()
    second = again.get(path, follow=True)
    assert "This link no longer works" in second.content.decode()
    forged = again.post(
        path.rsplit("/", 2)[0] + "/set-password/",
        {"new_password1": "hijacked-pass-999", "new_password2": "hijacked-pass-999"},
    )
    assert "This link no longer works" in forged.content.decode()
    assert user("carol").check_password("a-long-pass-4567")

    entries = AuditEntry.objects.filter(action__startswith="team_").order_by("id")
    assert [(e.action, e.outcome, e.actor_name) for e in entries] == [
        ("team_invite", "done", "boss"),
        ("team_password_set", "done", "carol"),
    ]
    assert entries[0].after == {"user": "carol", "role": "supervisor", "active": True}
    assert entries[0].session_id == ""  # never listed on a session page
    page = staff.get("/team/").content.decode()
    audit = page[page.index('id="team-audit"') :]
    assert "Invite" in audit and "Password set from link" in audit and "carol" in audit


def test_an_invited_viewer_cannot_intervene(staff):
    invite(staff, "vera", "viewer")
    assert role_of("vera") == "viewer"
    assert not user("vera").has_perm("coordination.intervene")


def test_a_link_for_a_deactivated_user_is_refused(staff):
    link = link_in(invite(staff, "gone", "viewer")).removeprefix("http://testserver")
    staff.post(f"/team/{user('gone').pk}/active/", {"active": "0"})
    response = Client().get(link, follow=True)
    assert "This link no longer works" in response.content.decode()


def test_a_new_link_only_for_someone_without_a_password(staff, viewer):
    old_link = link_in(invite(staff, "lost", "viewer")).removeprefix("http://testserver")
    response = staff.post(f"/team/{user('lost').pk}/link/")
    assert response.status_code == 200 and "This link is shown once" in response.content.decode()
    new_link = link_in(response).removeprefix("http://testserver")
    assert new_link != old_link
    assert "This link no longer works" in Client().get(old_link, follow=True).content.decode()
    assert "Set your password" in Client().get(new_link, follow=True).content.decode()
    assert AuditEntry.objects.filter(action="team_link", outcome="done").count() == 1
    # viewer has a password: a link would let staff take the account over
    response = staff.post(f"/team/{viewer.pk}/link/", follow=True)
    assert "invite-link-value" not in response.content.decode()
    assert "has a password already" in response.content.decode()


@pytest.mark.parametrize("name", ["boss", "BOSS", "Boss", "ｂｏｓｓ"])
def test_duplicate_usernames_are_refused_with_a_clear_message(staff, name):
    response = invite(staff, name, "supervisor")
    assert response.status_code == 400
    assert "already exists" in response.content.decode()
    assert User.objects.filter(username__iexact="boss").count() == 1
    assert role_of("boss") == "staff"


@pytest.mark.parametrize(
    "name",
    [
        "<script>alert(1)</script>",
        '"><img src=x onerror=alert(1)>',
        "a" * 10_000,
        "a\x00b",
        "",
        "   ",
        "with space",
        "\u202eevil",
    ],
)
def test_hostile_usernames_are_refused_and_escaped(staff, name):
    before = User.objects.count()
    response = invite(staff, name, "viewer")
    assert response.status_code == 400
    assert User.objects.count() == before
    body = response.content.decode()
    assert "<script>alert(1)" not in body and "<img src=x" not in body
    assert len(body) < 60_000  # the 10k-character value is not echoed whole
    assert not AuditEntry.objects.filter(action="team_invite").exists()


def test_lone_surrogate_bytes_in_a_username_are_refused_not_a_500(staff):
    # %ED%A0%80 is U+D800 in (invalid) UTF-8: Django decodes it as U+FFFD, which the
    # username validator refuses
    response = staff.generic(
        "POST",
        "/team/invite/",
        "username=a%ED%A0%80b&role=viewer",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 400
    assert User.objects.filter(username__contains="a").count() == 0


def test_users_with_hostile_names_made_elsewhere_are_shown_escaped(staff):
    # createsuperuser or the admin may hold names the invite form would refuse
    evil = User.objects.create_user('<img src=x onerror="alert(1)">\u202e')
    response = staff.post(f"/team/{evil.pk}/role/", {"role": "supervisor"}, **HX)
    assert response.status_code == 200
    for body in (response.content.decode(), staff.get("/team/").content.decode()):
        assert "<img src=x" not in body
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in body


# --- roles -----------------------------------------------------------------------------------


def test_promoting_a_viewer_lets_them_act_and_is_audited(staff, viewer):
    assert not viewer.has_perm("coordination.intervene")
    response = staff.post(f"/team/{viewer.pk}/role/", {"role": "supervisor"}, **HX)
    assert response.status_code == 200
    assert response["HX-Trigger"] == "team-changed"
    body = response.content.decode()
    assert body.lstrip().startswith(f'<tr id="team-user-{viewer.pk}"')  # the row, swapped in place
    assert "view is now supervisor (was viewer)." in body
    assert User.objects.get(pk=viewer.pk).has_perm("coordination.intervene")
    assert not Group.objects.get(name="viewers").user_set.filter(pk=viewer.pk).exists()
    entry = AuditEntry.objects.get(action="team_role")
    assert entry.actor_name == "boss" and entry.outcome == "done"
    assert entry.before["role"] == "viewer" and entry.after["role"] == "supervisor"
    # the audit list refreshes itself on that trigger: the partial alone
    audit = staff.get("/team/", HTTP_HX_TARGET="team-audit", **HX).content.decode()
    assert audit.lstrip().startswith('<section id="team-audit"') and "Change role" in audit

    # and back (without htmx: a redirect with the message)
    response = staff.post(f"/team/{viewer.pk}/role/", {"role": "viewer"}, follow=True)
    assert "view is now viewer (was supervisor)." in response.content.decode()
    assert not User.objects.get(pk=viewer.pk).has_perm("coordination.intervene")


def test_making_someone_staff_and_demoting_them_again(staff, supervisor):
    staff.post(f"/team/{supervisor.pk}/role/", {"role": "staff"})
    assert user("sup").is_staff and user("sup").has_perm("coordination.intervene")
    staff.post(f"/team/{supervisor.pk}/role/", {"role": "supervisor"})
    assert role_of("sup") == "supervisor" and not user("sup").is_staff


@pytest.mark.parametrize(
    "value", ["admin", "superuser", "", "STAFF", "staff ", "viewer\x00", "supervisor;staff"]
)
def test_forged_role_values_change_nothing(staff, viewer, value):
    response = staff.post(f"/team/{viewer.pk}/role/", {"role": value}, **HX)
    assert "Choose viewer, supervisor or staff." in response.content.decode()
    assert role_of("view") == "viewer" and not user("view").is_superuser


def test_two_role_values_do_not_sneak_staff_in(staff, viewer):
    # a QueryDict's last value wins; either way the result is one known role
    staff.post(f"/team/{viewer.pk}/role/", {"role": ["supervisor", "bogus"]})
    assert role_of("view") == "viewer"


@pytest.mark.parametrize("value", ["", "yes", "2", "-1", "true"])
def test_forged_active_values_change_nothing(staff, viewer, value):
    response = staff.post(f"/team/{viewer.pk}/active/", {"active": value}, **HX)
    assert "Choose deactivate or reactivate." in response.content.decode()
    assert user("view").is_active


def test_unknown_users_are_404(staff):
    assert staff.post("/team/999999/role/", {"role": "viewer"}).status_code == 404
    assert staff.post("/team/999999/active/", {"active": "0"}).status_code == 404


def test_superusers_keep_their_role_here(staff):
    root = User.objects.create_superuser("root", password="pw-root-123456")
    response = staff.post(f"/team/{root.pk}/role/", {"role": "viewer"}, **HX)
    assert "is a superuser" in response.content.decode()
    assert user("root").is_staff
    assert AuditEntry.objects.get(action="team_role").outcome == "refused"


# --- self and the last staff member ----------------------------------------------------------


@pytest.mark.parametrize("role", ["viewer", "supervisor"])
def test_staff_cannot_demote_themselves(staff, boss, role):
    response = staff.post(f"/team/{boss.pk}/role/", {"role": role}, **HX)
    assert "You cannot demote yourself" in response.content.decode()
    assert user("boss").is_staff
    entry = AuditEntry.objects.get(action="team_role")
    assert entry.outcome == "refused" and entry.before["user"] == "boss"


def test_staff_cannot_deactivate_themselves(staff, boss):
    response = staff.post(f"/team/{boss.pk}/active/", {"active": "0"}, follow=True)
    assert "You cannot deactivate yourself" in response.content.decode()
    assert user("boss").is_active
    assert AuditEntry.objects.get(action="team_deactivate").outcome == "refused"


def test_the_last_active_staff_member_is_never_demoted_or_deactivated(staff, boss):
    """Two staff demote each other at once: the first wins; the second, whose own staff status
    is already gone when it runs, must not leave the team without staff."""
    other = User.objects.create_user("other", is_staff=True)
    request = RequestFactory().post("/team/")
    request.user = boss
    # other already demoted boss (the row lock serialises the two)
    User.objects.filter(pk=boss.pk).update(is_staff=False)
    with pytest.raises(team.TeamRefused, match="last active staff member"):
        team.change_role(request, other, "viewer")
    with pytest.raises(team.TeamRefused, match="last active staff member"):
        team.set_active(request, other, False)
    assert user("other").is_staff and user("other").is_active
    assert set(AuditEntry.objects.values_list("action", "outcome")) == {
        ("team_role", "refused"),
        ("team_deactivate", "refused"),
    }


def test_demoting_another_staff_member_while_others_remain(staff):
    other = User.objects.create_user("other", is_staff=True)
    staff.post(f"/team/{other.pk}/role/", {"role": "viewer"})
    assert role_of("other") == "viewer"


# --- deactivation ----------------------------------------------------------------------------


def test_deactivating_signs_a_user_out_and_reactivating_lets_them_back(staff, supervisor, boss):
    theirs = Client()
    theirs.force_login(supervisor)
    other_staff = User.objects.create_user("helper", is_staff=True)
    helper = Client()
    helper.force_login(other_staff)
    assert helper.get("/team/").status_code == 200

    response = staff.post(f"/team/{other_staff.pk}/active/", {"active": "0"}, **HX)
    assert "helper is deactivated" in response.content.decode()
    assert "Reactivate" in response.content.decode()
    assert helper.get("/team/").status_code == 302  # signed out: back to the login page
    staff.post(f"/team/{supervisor.pk}/active/", {"active": "0"})
    assert not user("sup").is_active
    assert not Client().login(username="sup", password="pw-sup-123456")

    staff.post(f"/team/{supervisor.pk}/active/", {"active": "1"})
    assert user("sup").is_active
    assert Client().login(username="sup", password="pw-sup-123456")
    actions = list(
        AuditEntry.objects.filter(action__startswith="team_")
        .order_by("id")
        .values_list("action", "outcome")
    )
    assert actions == [
        ("team_deactivate", "done"),
        ("team_deactivate", "done"),
        ("team_reactivate", "done"),
    ]


def test_team_entries_open_in_the_admins_audit_log(staff, viewer):
    staff.post(f"/team/{viewer.pk}/role/", {"role": "supervisor"})
    entry = AuditEntry.objects.get(action="team_role")
    assert staff.get("/admin/coordination/auditentry/").status_code == 200
    page = staff.get(f"/admin/coordination/auditentry/{entry.pk}/change/")
    assert page.status_code == 200 and "team_role" in page.content.decode()
