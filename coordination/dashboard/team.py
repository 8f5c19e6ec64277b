"""The Team page (/team/): staff invite people, change their role and deactivate them without
the Django admin. Every change leaves an ``AuditEntry`` (refusals included), listed on the page.

Roles are what the rest of the project already checks: a *viewer* is in the "viewers" group
and may not act; a *supervisor* is in the "supervisors" group, which holds
``coordination.intervene`` (migration 0002); *staff* (``is_staff``) are supervisors who also
manage the team and use the admin.

An invited person gets a one-time set-password link (Django's password-reset token: it stops
working once a password is set, because the token covers the password hash). No email backend
is configured, so the link is shown once, to the staff member who invited, and stored nowhere.

Server-side rules: only staff see the page or act (403 otherwise, POSTs included); nobody
demotes or deactivates themselves; the last active staff member is never demoted or
deactivated (checked under a row lock, so two staff demoting each other at once cannot both
succeed).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UsernameField
from django.contrib.auth.models import AbstractUser, Group, Permission
from django.contrib.auth.tokens import default_token_generator
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.contrib.auth.views import PasswordResetConfirmView
from django.db import transaction
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse, reverse_lazy
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from coordination.models import AuditEntry

audit_log = logging.getLogger("coordination.audit")

VIEWER, SUPERVISOR, STAFF = "viewer", "supervisor", "staff"
ROLE_LABELS = {VIEWER: "Viewer", SUPERVISOR: "Supervisor", STAFF: "Staff"}
SUPERVISORS_GROUP, VIEWERS_GROUP = "supervisors", "viewers"

# Audit actions of this page. Kept out of AuditEntry.Action (its choices are part of the
# migration state); the column is free text and the admin shows the raw value.
INVITE, ROLE, DEACTIVATE, REACTIVATE, NEW_LINK, PASSWORD_SET = (
    "team_invite",
    "team_role",
    "team_deactivate",
    "team_reactivate",
    "team_link",
    "team_password_set",
)
ACTION_LABELS = {
    INVITE: "Invite",
    ROLE: "Change role",
    DEACTIVATE: "Deactivate",
    REACTIVATE: "Reactivate",
    NEW_LINK: "New set-password link",
    PASSWORD_SET: "Password set from link",
}
AUDIT_ROWS = 50
USERNAME_MAX = 150  # Django's User.username


class TeamRefused(Exception):
    """The change was not made; the message says why."""


# --- forms -------------------------------------------------------------------------------


class InviteForm(forms.Form):
    # UsernameField applies NFKC, as the login form does, so the name typed later matches
    username = UsernameField(
        max_length=USERNAME_MAX,
        validators=[UnicodeUsernameValidator()],
        help_text="Letters, digits and @ . + - _ only; at most 150 characters.",
    )
    role = forms.ChoiceField(
        choices=[
            (VIEWER, "Viewer"),
            (SUPERVISOR, "Supervisor"),
        ],
        initial=VIEWER,
    )

    def clean_username(self) -> str:
        name = self.cleaned_data["username"]
        # case-insensitively: "Sup" beside "sup" is a mistake waiting to be made
        if get_user_model().objects.filter(username__iexact=name).exists():
            raise forms.ValidationError(
                "A user named %(name)s already exists: change their role below instead.",
                code="duplicate",
                params={"name": name},
            )
        return name


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=list(ROLE_LABELS.items()))


# --- roles ---------------------------------------------------------------------------------


def _groups() -> tuple[Group, Group]:
    """The two role groups; recreated with migration 0002's permissions if someone deleted
    them, so "supervisor" always means "may intervene"."""
    supervisors, created = Group.objects.get_or_create(name=SUPERVISORS_GROUP)
    if created:
        supervisors.permissions.add(
            *Permission.objects.filter(
                content_type__app_label="coordination",
                codename__in=["intervene", "view_auditentry"],
            )
        )
    viewers, created = Group.objects.get_or_create(name=VIEWERS_GROUP)
    if created:
        viewers.permissions.add(
            *Permission.objects.filter(
                content_type__app_label="coordination", codename="view_auditentry"
            )
        )
    return supervisors, viewers


def role_of(user: AbstractUser) -> str:
    if user.is_staff:
        return STAFF
    # prefetched on the page (see _members); any() avoids a query per row
    if any(g.name == SUPERVISORS_GROUP for g in user.groups.all()):
        return SUPERVISOR
    return VIEWER


def _set_role(user: AbstractUser, role: str) -> None:
    supervisors, viewers = _groups()
    user.is_staff = role == STAFF
    user.save(update_fields=["is_staff"])
    if role == VIEWER:
        user.groups.remove(supervisors)
        user.groups.add(viewers)
    else:  # staff are supervisors too (the overview's actions need the permission)
        user.groups.add(supervisors)
        user.groups.remove(viewers)


def _snapshot(user: AbstractUser) -> dict[str, Any]:
    return {"user": user.get_username(), "role": role_of(user), "active": user.is_active}


def _record(
    request: HttpRequest,
    action: str,
    target: AbstractUser | None,
    before,
    after,
    outcome: str,
    detail: str,
) -> None:
    actor = request.user
    name = target.get_username() if target is not None else ""
    audit_log.info(
        "%s %s %s %s: %s",
        actor.get_username(),
        action,
        name,
        outcome,
        detail[:200],
        extra={"actor": actor.get_username(), "action": action, "outcome": outcome},
    )
    AuditEntry.objects.create(
        actor=actor if actor.is_authenticated else None,
        actor_name=actor.get_username() or name,
        action=action,
        session_id="",  # not about a session: the session pages never list these
        before=before,
        after=after,
        outcome=outcome,
        detail=detail[:2000],
        client_address=request.META.get("REMOTE_ADDR") or None,
    )


def _lock_staff() -> int:
    """Lock the active staff rows for this transaction and count them."""
    return len(
        list(
            get_user_model()
            .objects.select_for_update()
            .filter(is_staff=True, is_active=True)
            .values_list("pk", flat=True)
        )
    )


def _guard_last_staff(actor: AbstractUser, target: AbstractUser, what: str) -> None:
    if target.pk == actor.pk:
        raise TeamRefused(f"You cannot {what} yourself: ask another staff member.")
    if target.is_staff and target.is_active and _lock_staff() <= 1:
        raise TeamRefused(
            f"{target.get_username()} is the last active staff member: make someone else staff first."
        )


def change_role(request: HttpRequest, target: AbstractUser, role: str) -> str:
    """Give ``target`` the role; returns the message. Raises TeamRefused (audited)."""
    before = _snapshot(target)
    try:
        with transaction.atomic():
            target = get_user_model().objects.select_for_update().get(pk=target.pk)
            if target.is_superuser:
                raise TeamRefused(
                    f"{target.get_username()} is a superuser and holds every permission whatever "
                    "the role: change that in the Django admin."
                )
            if before["role"] == role:
                return f"{target.get_username()} is already {ROLE_LABELS[role].lower()}."
            if before["role"] == STAFF:
                _guard_last_staff(request.user, target, "demote")
            _set_role(target, role)
    except TeamRefused as exc:
        _record(request, ROLE, target, before, None, "refused", str(exc))
        raise
    target = get_user_model().objects.get(pk=target.pk)
    message = f"{target.get_username()} is now {ROLE_LABELS[role].lower()} (was {before['role']})."
    _record(request, ROLE, target, before, _snapshot(target), "done", message)
    return message


def set_active(request: HttpRequest, target: AbstractUser, active: bool) -> str:
    action = REACTIVATE if active else DEACTIVATE
    before = _snapshot(target)
    try:
        with transaction.atomic():
            target = get_user_model().objects.select_for_update().get(pk=target.pk)
            if target.is_active == active:
                return (
                    f"{target.get_username()} is already {'active' if active else 'deactivated'}."
                )
            if not active:
                _guard_last_staff(request.user, target, "deactivate")
            target.is_active = active
            target.save(update_fields=["is_active"])
    except TeamRefused as exc:
        _record(request, action, target, before, None, "refused", str(exc))
        raise
    if active:
        message = f"{target.get_username()} can sign in again."
    else:
        # ModelBackend refuses inactive users on every request and websocket, and the API
        # refuses their tokens: no session of theirs keeps working
        message = (
            f"{target.get_username()} is deactivated: signed out everywhere, API tokens refused."
        )
    _record(request, action, target, before, _snapshot(target), "done", message)
    return message


def _set_password_link(request: HttpRequest, user: AbstractUser) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    return request.build_absolute_uri(reverse("coordination:team_set_password", args=[uid, token]))


# --- views ---------------------------------------------------------------------------------


def staff_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """403 for anyone signed in but not staff (LoginRequiredMiddleware handles the rest)."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not (request.user.is_active and request.user.is_staff):
            return HttpResponseForbidden("Only staff manage the team.", content_type="text/plain")
        return view(request, *args, **kwargs)

    return wrapper


def _member(user: AbstractUser, me: AbstractUser) -> dict[str, Any]:
    return {
        "user": user,
        "role": role_of(user),
        "role_label": ROLE_LABELS[role_of(user)],
        "is_self": user.pk == me.pk,
        "invited": not user.has_usable_password(),
        "last_login_ts": user.last_login.timestamp() if user.last_login else None,
        "roles": list(ROLE_LABELS.items()),
    }


def _members(me: AbstractUser) -> list[dict[str, Any]]:
    users = (
        get_user_model()
        .objects.order_by("-is_active", "username")
        .prefetch_related(Prefetch("groups", queryset=Group.objects.only("name")))
    )
    return [_member(u, me) for u in users]


def _audit_rows() -> list[dict[str, Any]]:
    rows = []
    for entry in AuditEntry.objects.filter(action__in=ACTION_LABELS)[:AUDIT_ROWS]:
        target = (entry.after or entry.before or {}).get("user", "")
        rows.append({"entry": entry, "label": ACTION_LABELS[entry.action], "target": target})
    return rows


def _page(request: HttpRequest, form: InviteForm | None = None, **extra) -> HttpResponse:
    context = {
        "nav": "team",
        "form": form or InviteForm(),
        "members": _members(request.user),
        "audit": _audit_rows(),
        "audit_limit": AUDIT_ROWS,
        "link_days": max(1, settings.PASSWORD_RESET_TIMEOUT // 86400),
        **extra,
    }
    status = 400 if form is not None and form.errors else 200
    return render(request, "coordination/team.html", context, status=status)


@never_cache
@require_GET
@vary_on_headers("HX-Request")
@staff_only
def team(request: HttpRequest) -> HttpResponse:
    if request.htmx and request.htmx.target == "team-audit":
        # the audit list refreshes itself after an htmx row action (HX-Trigger: team-changed)
        return render(
            request,
            "coordination/team.html#team-audit",
            {"audit": _audit_rows(), "audit_limit": AUDIT_ROWS},
        )
    return _page(request)


@never_cache
@require_POST
@staff_only
def invite(request: HttpRequest) -> HttpResponse:
    form = InviteForm(request.POST)
    if not form.is_valid():
        return _page(request, form)
    role = form.cleaned_data["role"]
    with transaction.atomic():
        # no password given: an unusable one, so nobody signs in as them before the link is used
        user = get_user_model().objects.create_user(form.cleaned_data["username"])
        _set_role(user, role)
    user = get_user_model().objects.get(pk=user.pk)
    message = f"Invited {user.get_username()} as {ROLE_LABELS[role].lower()}."
    _record(request, INVITE, user, None, _snapshot(user), "done", message)
    # rendered, not redirected: the link exists only in this response
    return _page(
        request, invite_link=_set_password_link(request, user), invited=user, invite_message=message
    )


def _row_response(
    request: HttpRequest, target: AbstractUser, message: str, ok: bool
) -> HttpResponse:
    if not request.htmx:
        (messages.success if ok else messages.error)(request, message)
        return redirect("coordination:team")
    target = get_user_model().objects.prefetch_related("groups").get(pk=target.pk)
    context = {"member": _member(target, request.user), "row_message": message, "row_ok": ok}
    response = render(request, "coordination/team.html#team-row", context)
    response["HX-Trigger"] = "team-changed"
    return response


@never_cache
@require_POST
@vary_on_headers("HX-Request")
@staff_only
def role(request: HttpRequest, pk: int) -> HttpResponse:
    target = get_object_or_404(get_user_model(), pk=pk)
    form = RoleForm(request.POST)
    if not form.is_valid():
        # a forged value: nothing changes; not audited (no change was attempted on a real role)
        return _row_response(request, target, "Choose viewer, supervisor or staff.", False)
    try:
        message, ok = change_role(request, target, form.cleaned_data["role"]), True
    except TeamRefused as exc:
        message, ok = str(exc), False
    return _row_response(request, target, message, ok)


@never_cache
@require_POST
@vary_on_headers("HX-Request")
@staff_only
def active(request: HttpRequest, pk: int) -> HttpResponse:
    target = get_object_or_404(get_user_model(), pk=pk)
    wanted = request.POST.get("active")
    if wanted not in ("0", "1"):
        return _row_response(request, target, "Choose deactivate or reactivate.", False)
    try:
        message, ok = set_active(request, target, wanted == "1"), True
    except TeamRefused as exc:
        message, ok = str(exc), False
    return _row_response(request, target, message, ok)


@never_cache
@require_POST
@staff_only
def new_link(request: HttpRequest, pk: int) -> HttpResponse:
    """A fresh link for someone invited who lost theirs. Only while they have no password:
    for anyone else it would let staff take over an account."""
    target = get_object_or_404(get_user_model(), pk=pk)
    if target.has_usable_password() or not target.is_active:
        messages.error(
            request, f"{target.get_username()} has a password already (or is deactivated): no link."
        )
        return redirect("coordination:team")
    # a new random unusable password changes the token's input: the old link stops working
    target.set_unusable_password()
    target.save(update_fields=["password"])
    message = (
        f"New set-password link for {target.get_username()}; the previous one no longer works."
    )
    _record(request, NEW_LINK, target, None, _snapshot(target), "done", message)
    return _page(
        request,
        invite_link=_set_password_link(request, target),
        invited=target,
        invite_message=message,
    )


class SetPasswordView(PasswordResetConfirmView):
    """The invited person's link. Signed out (login_not_required comes with Django's view);
    once a password is set the token no longer matches and the link is refused."""

    template_name = "coordination/team_set_password.html"
    success_url = reverse_lazy("login")

    def get_user(self, uidb64: str):
        user = super().get_user(uidb64)
        return user if user is not None and user.is_active else None

    def form_valid(self, form):
        response = super().form_valid(form)
        user = form.user
        AuditEntry.objects.create(
            actor=user,
            actor_name=user.get_username(),
            action=PASSWORD_SET,
            session_id="",
            after={"user": user.get_username(), "role": role_of(user), "active": user.is_active},
            outcome="done",
            detail=f"{user.get_username()} set a password from their link.",
            client_address=self.request.META.get("REMOTE_ADDR") or None,
        )
        messages.success(self.request, "Your password is set: sign in with it.")
        return response


urlpatterns = [
    path("", team, name="team"),
    path("invite/", invite, name="team_invite"),
    path("<int:pk>/role/", role, name="team_role"),
    path("<int:pk>/active/", active, name="team_active"),
    path("<int:pk>/link/", new_link, name="team_link"),
    path("set-password/<uidb64>/<token>/", SetPasswordView.as_view(), name="team_set_password"),
]
