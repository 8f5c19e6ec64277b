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

from .auth import throttle_login
from .core import DELETE, CoordinationError, InvalidCursor, InvalidSessionId, VersionConflict
from .core.keys import validate_session_id
from .live import announce_audit
from .models import AuditEntry
from .services import coordinator, session_index

ADMIN_PAGE = 50
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
                "sessions/<path:session_id>/state/",
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
        current = async_to_sync(coord.get_state_versions)()
        if async_to_sync(session_index().get_session)(session_id) is None:
            raise Http404(f"No session {session_id!r}")
        errors: dict[str, str] = {}
        submitted: dict[str, str] = {}
        if request.method == "POST":
            result = self._save_state(request, session_id, current, errors, submitted)
            if result is not None:
                return result
            current = async_to_sync(coord.get_state_versions)()
        rows = [
            {
                "key": key,
                "text": submitted.get(
                    key, json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
                ),
                "original": json.dumps(value, sort_keys=True),
                "version": version,
                "error": errors.get(key),
            }
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
        for i in range(int(post.get("count", "0") or 0)):
            key = post.get(f"key-{i}", "")
            version = int(post.get(f"version-{i}", "0") or 0)
            text = post.get(f"value-{i}", "")
            submitted[key] = text
            if post.get(f"delete-{i}"):
                changes[key], expected[key] = DELETE, version
                before[key], after[key] = json.loads(post.get(f"original-{i}", "null")), None
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                errors[key] = f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
                continue
            original = post.get(f"original-{i}", "null")
            if json.dumps(value, sort_keys=True) != original:
                changes[key], expected[key] = value, version
                before[key], after[key] = json.loads(original), value
        new_key = post.get("new_key", "").strip()
        if new_key:
            submitted["__new_key__"], submitted["__new_value__"] = (
                new_key,
                post.get("new_value", ""),
            )
            try:
                changes[new_key] = json.loads(post.get("new_value", ""))
                expected[new_key] = 0  # must not exist yet
                before[new_key], after[new_key] = None, changes[new_key]
            except json.JSONDecodeError as exc:
                errors[NEW_KEY_ERROR] = f"The new value is not valid JSON: {exc.msg}."
        if errors:
            return None
        if not changes:
            messages.info(request, "Nothing changed.")
            return HttpResponseRedirect(request.path)
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
        return HttpResponseRedirect(request.path)

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
