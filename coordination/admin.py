"""Admin: the audit log (read-only), and sessions from the core's index with a shared-state
editor that saves through the core's versioned compare-and-set."""

from __future__ import annotations

import json

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from coordination.core import (
    DELETE,
    CoordinationError,
    InvalidCursor,
    InvalidSessionId,
    VersionConflict,
)
from coordination.core.coordinator import InvalidStoredValue
from coordination.core.events import encode_json
from coordination.core.keys import validate_session_id
from coordination.dashboard.session_urls import CONVERTER as SID
from coordination.models import AuditEntry
from coordination.platform.auth import throttle_login
from coordination.platform.core_clients import coordinator, session_index
from coordination.realtime.groups import announce_audit

ADMIN_PAGE = 50
MAX_STATE_ROWS = 1000  # Django refuses a form of over 1,000 fields before this view anyway
NEW_KEY_ERROR = "\x00new"  # errors of the "add a key" row; no state key can hold NUL

# /admin/login/ is a second sign-in form: the same throttle as /login/ (get_urls reads .login).
admin.site.login = throttle_login(admin.site.login)


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ("created", "actor_name", "action", "session_id", "outcome", "client_address")
    list_filter = ("action", "outcome", "created")
    search_fields = ("session_id", "actor_name", "detail")
    readonly_fields = [f.name for f in AuditEntry._meta.fields]
    date_hierarchy = "created"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # pruning is the prune_audit command, never a click

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("sessions/", view(self.sessions_view), name="coordination_sessions"),
            path(
                # the id as one path segment: "zz/../victim" must not edit "victim"
                f"sessions/<{SID}:session_id>/state/",
                view(self.state_view),
                name="coordination_session_state",
            ),
            *super().get_urls(),
        ]

    def _check_staff(self, request) -> None:
        if not request.user.is_staff:
            raise PermissionDenied

    def sessions_view(self, request):
        self._check_staff(request)
        prefix = request.GET.get("q", "").strip() or None
        cursor = request.GET.get("cursor") or None
        try:
            page = async_to_sync(session_index().list_sessions)(
                cursor=cursor, limit=ADMIN_PAGE, prefix=prefix
            )
        except (InvalidCursor, ValueError) as exc:
            messages.error(request, f"Bad page cursor: {exc}")
            return HttpResponseRedirect(reverse("admin:coordination_sessions"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Sessions",
            "sessions": page.sessions,
            "next_cursor": page.next_cursor,
            "query": prefix or "",
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/coordination/sessions.html", context)

    def state_view(self, request, session_id: str):
        self._check_staff(request)
        if not request.user.has_perm("coordination.intervene"):
            raise PermissionDenied
        try:
            validate_session_id(session_id)
        except InvalidSessionId as exc:
            raise Http404(str(exc)) from None
        coord = coordinator(session_id)
        current = async_to_sync(coord.get_state_versions)(keep_invalid=True)
        if async_to_sync(session_index().get_session)(session_id) is None:
            raise Http404(f"No session {session_id!r}")
        errors: dict[str, str] = {}
        submitted: dict[str, str] = {}
        if request.method == "POST":
            result = self._save_state(request, session_id, current, errors, submitted)
            if result is not None:
                return result
            current = async_to_sync(coord.get_state_versions)(keep_invalid=True)
        rows = [
            _state_row(key, value, version, submitted, errors)
            for key, (value, version) in current.items()
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": f"Shared state of {session_id}",
            "session_id": session_id,
            "rows": rows,
            "errors": bool(errors),
            "new_error": errors.get(NEW_KEY_ERROR),
            "new_key": submitted.get("__new_key__", ""),
            "new_value": submitted.get("__new_value__", ""),
            "opts": self.model._meta,
        }
        return TemplateResponse(
            request, "admin/coordination/state.html", context, status=400 if errors else 200
        )

    def _save_state(self, request, session_id, current, errors, submitted):
        post = request.POST
        changes, expected, before, after = {}, {}, {}, {}
        count = _form_int(post.get("count"))
        if count is None or count > MAX_STATE_ROWS:
            errors[NEW_KEY_ERROR] = (
                "The form was damaged (its row count is missing or wrong): reload the page."
            )
            return None
        for i in range(count):
            key = post.get(f"key-{i}", "")
            text = post.get(f"value-{i}", "")
            submitted[key] = text
            version = _form_int(post.get(f"version-{i}"))
            original, bad_original = _parse_json(post.get(f"original-{i}", "null"))
            if version is None or bad_original:
                errors[key] = "The form was damaged (a hidden field is wrong): reload the page."
                continue
            if post.get(f"delete-{i}"):
                changes[key], expected[key] = DELETE, version
                before[key], after[key] = original, None
                continue
            value, error = _parse_json(text, key)
            if error:
                errors[key] = error
                continue
            if json.dumps(value, sort_keys=True) != json.dumps(original, sort_keys=True):
                changes[key], expected[key] = value, version
                before[key], after[key] = original, value
        new_key = post.get("new_key", "").strip()
        if new_key:
            submitted["__new_key__"], submitted["__new_value__"] = (
                new_key,
                post.get("new_value", ""),
            )
            value, error = _parse_json(post.get("new_value", ""), new_key)
            if error:
                errors[NEW_KEY_ERROR] = f"The new value: {error}"
            else:
                changes[new_key], expected[new_key] = value, 0  # 0: must not exist yet
                before[new_key], after[new_key] = None, value
        if errors:
            return None
        if not changes:
            messages.info(request, "Nothing changed.")
            return HttpResponseRedirect(_state_url(session_id))
        actor = f"human:{request.user.get_username()}"
        try:
            async_to_sync(coordinator(session_id).update_state)(
                changes, expected_versions=expected, by=actor
            )
        except VersionConflict as exc:
            mine = changes.get(exc.key)
            mine_text = "deleted" if mine is DELETE else json.dumps(mine, ensure_ascii=False)
            errors[exc.key if exc.key in current else NEW_KEY_ERROR] = (
                f"Changed by someone else since you opened this page. Yours: {mine_text}; "
                f"now: {json.dumps(exc.current_value, ensure_ascii=False)} (version {exc.actual}). "
                "Nothing was saved; the form shows the current values."
            )
            self._audit(request, session_id, before, after, "refused", str(exc))
            submitted.clear()
            return None
        except CoordinationError as exc:
            errors[NEW_KEY_ERROR] = str(exc)
            return None
        self._audit(request, session_id, before, after, "done", f"{len(changes)} key(s)")
        messages.success(
            request, f"Saved {len(changes)} change(s); agents received STATE_CHANGED events."
        )
        return HttpResponseRedirect(_state_url(session_id))

    def _audit(self, request, session_id, before, after, outcome, detail):
        AuditEntry.objects.create(
            actor=request.user,
            actor_name=request.user.get_username(),
            action=AuditEntry.Action.STATE_EDIT,
            session_id=session_id,
            before=before,
            after=after,
            outcome=outcome,
            detail=detail[:2000],
            client_address=request.META.get("REMOTE_ADDR"),
        )
        async_to_sync(announce_audit)(session_id)


def _state_row(key, value, version, submitted, errors) -> dict:
    """One key of the editor. A value an agent wrote around the core that is not JSON is
    shown as its text, with a note; saving valid JSON (or deleting it) replaces it."""
    if isinstance(value, InvalidStoredValue):
        return {
            "key": key,
            "text": submitted.get(key, value.text),
            "original": json.dumps(value.text),
            "version": version,
            "error": errors.get(key)
            or f"The stored value is not JSON ({value.reason}): replace it with JSON or delete it.",
        }
    return {
        "key": key,
        "text": submitted.get(key, json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)),
        "original": json.dumps(value, sort_keys=True),
        "version": version,
        "error": errors.get(key),
    }


def _state_url(session_id: str) -> str:
    """The editor's own URL, built from the id (``request.path`` is the decoded path: sent
    back as a Location it could name another session)."""
    return reverse("admin:coordination_session_state", args=[session_id])


def _form_int(text: str | None) -> int | None:
    """A non-negative integer from a hidden field, or None when it is anything else."""
    text = (text or "0").strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


def _parse_json(text: str, key: str | None = None) -> tuple[object, str | None]:
    """``(value, None)``, or ``(None, a message for the form)``: never raises, whatever the
    text (bare words, 10,000 levels of nesting, a 5,000-digit number, NaN). With ``key``, the
    value must also be one the core stores (depth, size, JSON-only values)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
    except RecursionError:
        return None, "Not accepted: the JSON is nested too deeply."
    except ValueError as exc:  # e.g. an integer longer than Python converts
        return None, f"Not accepted: {exc}."
    if key is not None:
        try:
            encode_json(value, f"state[{key!r}]")
        except CoordinationError as exc:
            return None, f"Not accepted: {exc}."
        except RecursionError:
            return None, "Not accepted: the JSON is nested too deeply."
    return value, None
