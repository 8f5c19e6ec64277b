"""Admin: the audit log (read-only), and the live sessions from the core's index with a
shared-state editor (a Django formset) that saves through the core's versioned compare-and-set.

The sessions pages are the admin site's own URLs (/admin/coordination/sessions/...), listed
in the admin index and sidebar under the coordination app like a model, though they read Redis
and not the database.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.forms.formsets import INITIAL_FORM_COUNT, TOTAL_FORM_COUNT
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
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
from coordination.foundation.auth import throttle_login
from coordination.foundation.core_clients import coordinator, session_index
from coordination.foundation.display import clean_deep, clean_text, cut_chars, json_text
from coordination.models import AuditEntry
from coordination.realtime.groups import announce_audit
from coordination.supervision.actions import PERMISSION

ADMIN_PAGE = 50
# Forms the state formset builds at most, whatever its management form claims. Django refuses
# a POST of over DATA_UPLOAD_MAX_NUMBER_FIELDS (1,000) fields before the view runs anyway.
MAX_STATE_ROWS = 1000
NEW_KEY_CHARS = 256
SHOWN_CONFLICT_CHARS = 2000  # a conflicting value is quoted in the error up to this length
STATE_PREFIX = "state"

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


# -- JSON values typed by a person ----------------------------------------------------------------

# What people type for true, false and null when they think in Python (or in YAML).
_NOT_JSON_WORDS = {"True": "true", "False": "false", "None": "null", "nil": "null"}


def parse_json_value(text: str, key: str | None = None) -> Any:
    """The value ``text`` holds, or ``ValidationError`` with a message a person can act on;
    never any other exception, whatever the text (bare words, 10,000 levels of nesting, a
    5,000-digit number, NaN). With ``key``, the value must also be one the core stores."""
    stripped = text.strip()
    if not stripped:
        raise ValidationError(
            'Not valid JSON: the value is empty (write "" for an empty string, or tick delete).',
            code="empty",
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(_json_hint(stripped, exc), code="not_json") from None
    except RecursionError:
        raise ValidationError("Not accepted: the JSON is nested too deeply.", code="deep") from None
    except ValueError as exc:  # e.g. an integer longer than Python converts
        raise ValidationError(f"Not accepted: {exc}.", code="not_json") from None
    if key is not None:
        try:
            encode_json(value, f"state[{cut_chars(key, 80)!r}]")
        except CoordinationError as exc:
            raise ValidationError(f"Not accepted: {exc}.", code="refused") from None
        except RecursionError:
            raise ValidationError(
                "Not accepted: the JSON is nested too deeply.", code="deep"
            ) from None
    return value


def _json_hint(text: str, exc: json.JSONDecodeError) -> str:
    """The parser's complaint, and what to write instead when the text is a bare word: a
    person typing ``high`` means the string, which JSON writes ``"high"``."""
    if text in _NOT_JSON_WORDS:
        return f"Not valid JSON: write {_NOT_JSON_WORDS[text]} (JSON's spelling of {text})."
    if exc.msg == "Expecting value" and exc.pos == len(exc.doc) - len(exc.doc.lstrip()):
        if text[0] == "'" and text[-1] == "'" and len(text) > 1:
            text = text[1:-1]
        quoted = cut_chars(json_text(text), 80)
        return f"Not valid JSON: write strings in double quotes, {quoted}."
    return f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."


def _value_text(value: Any) -> str:
    """A stored value as the editor shows it: indented JSON that saves back unchanged. Lone
    surrogates (JSON escapes can hold them) stay escaped: a page cannot carry them raw."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, indent=2, sort_keys=True)
    return text


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# -- the state editor's forms ---------------------------------------------------------------------

DAMAGED = "The form was damaged (a hidden field is wrong): reload the page."


class StateRowForm(forms.Form):
    """One key of the session's state. The hidden fields say which key, at which version, and
    what its value was when the page was drawn (the audit's "before", and how an unchanged row
    is told apart). The key travels as JSON: any key round-trips, whatever it holds."""

    key = forms.CharField(widget=forms.HiddenInput, strip=False)
    version = forms.IntegerField(widget=forms.HiddenInput, min_value=0, max_value=10**18)
    original = forms.CharField(widget=forms.HiddenInput, strip=False)
    # a value an agent wrote around the core that is not JSON: ``original`` holds its text
    stored_invalid = forms.BooleanField(widget=forms.HiddenInput, required=False)
    delete = forms.BooleanField(required=False, label="delete this key")
    value = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80, "class": "vLargeTextField"}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if any(name in self.errors for name in ("key", "version", "original", "stored_invalid")):
            # only a forged or truncated form gets here: one message, not four
            for name in ("key", "version", "original", "stored_invalid"):
                self.errors.pop(name, None)
            raise ValidationError(DAMAGED, code="damaged")
        try:
            key = json.loads(data["key"])
            original = json.loads(data["original"])
        except (ValueError, RecursionError):
            raise ValidationError(DAMAGED, code="damaged") from None
        if not isinstance(key, str) or not key:
            raise ValidationError(DAMAGED, code="damaged")
        data["state_key"], data["original_value"] = key, original
        data["change"] = None  # nothing to write
        if data.get("delete"):
            data["change"] = DELETE
            return data
        text = data.get("value", "")
        if data.get("stored_invalid") and _lines(text) == _lines(str(original)):
            return data  # the text that is not JSON, left as it was
        try:
            value = parse_json_value(text, key)
        except ValidationError as exc:
            self.add_error("value", exc)
            return data
        if data.get("stored_invalid") or not _same(value, original):
            data["change"] = value
        return data

    @property
    def shown_key(self) -> str:
        """The key for the label, cleaned for display (the template escapes it)."""
        try:
            key = json.loads(self["key"].value() or '""')
        except (ValueError, RecursionError):
            return "(damaged)"
        return clean_text(key) if isinstance(key, str) else "(damaged)"

    @property
    def stored_invalid_note(self) -> str | None:
        """A value an agent wrote around the core that is not JSON says so on its row."""
        field = self.fields["stored_invalid"]
        if not field.to_python(self["stored_invalid"].value()):
            return None
        return (
            "The stored value is not JSON: replace it with JSON or delete it "
            "(left as it is, it is kept)."
        )


def _lines(text: str) -> str:
    """Browsers send a textarea's newlines as CRLF."""
    return text.replace("\r\n", "\n")


class BaseStateFormSet(forms.BaseFormSet):
    def clean(self) -> None:
        counts = self.management_form.cleaned_data
        if counts.get(TOTAL_FORM_COUNT, 0) < 0 or counts.get(INITIAL_FORM_COUNT, 0) < 0:
            raise ValidationError(DAMAGED, code="damaged")  # Django would read no row at all
        if any(self.errors):
            return
        keys = [f.cleaned_data["state_key"] for f in self.forms if f.cleaned_data]
        if len(keys) != len(set(keys)):
            raise ValidationError(DAMAGED, code="damaged")


StateFormSet = forms.formset_factory(
    StateRowForm,
    formset=BaseStateFormSet,
    extra=0,
    max_num=MAX_STATE_ROWS,
    validate_max=True,
    absolute_max=MAX_STATE_ROWS,
)


class NewKeyForm(forms.Form):
    """The "add a key" row: optional; a key given needs a value, and must not exist yet."""

    key = forms.CharField(required=False, max_length=NEW_KEY_CHARS, label="Key")
    value = forms.CharField(
        required=False,
        strip=False,
        label="Value (JSON)",
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        key = data.get("key")
        if key:
            try:
                data["new_value"] = parse_json_value(data.get("value", ""), key)
            except ValidationError as exc:
                self.add_error("value", exc)
        return data


def _row_initial(key: str, value: Any, version: int) -> dict[str, Any]:
    if isinstance(value, InvalidStoredValue):
        return {
            "key": json.dumps(key),
            "version": version,
            "original": json.dumps(value.text),
            "stored_invalid": True,
            "value": value.text,
        }
    return {
        "key": json.dumps(key),
        "version": version,
        "original": json.dumps(value, sort_keys=True),
        "stored_invalid": False,
        "value": _value_text(value),
    }


def _bound_to(current: dict[str, tuple[Any, int]]) -> StateFormSet:
    """The formset as a fresh page would submit it: what a refused save shows, the current
    values with the error on the key that changed."""
    data: dict[str, Any] = {
        f"{STATE_PREFIX}-TOTAL_FORMS": str(len(current)),
        f"{STATE_PREFIX}-INITIAL_FORMS": str(len(current)),
    }
    for i, (key, (value, version)) in enumerate(current.items()):
        for name, field_value in _row_initial(key, value, version).items():
            if field_value is not False:  # an unticked checkbox is not sent
                data[f"{STATE_PREFIX}-{i}-{name}"] = str(field_value)
    formset = StateFormSet(data, prefix=STATE_PREFIX)
    formset.full_clean()
    return formset


class SaveRefused(Exception):
    """The core refused the save; ``key`` is the key that changed meanwhile, if any."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


# -- the sessions pages ---------------------------------------------------------------------------


def _check_staff(request: HttpRequest) -> None:
    if not request.user.is_staff:
        raise PermissionDenied


def sessions_view(request: HttpRequest) -> HttpResponse:
    """Sessions from the core's index, a page at a time, searchable by id prefix."""
    _check_staff(request)
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
        **admin.site.each_context(request),
        "title": "Sessions",
        "sessions": page.sessions,
        "next_cursor": page.next_cursor,
        "query": prefix or "",
        "app_label": "coordination",
    }
    return TemplateResponse(request, "admin/coordination/sessions.html", context)


def state_view(request: HttpRequest, session_id: str) -> HttpResponse:
    """One session's shared state as a formset; saved in one compare-and-set."""
    _check_staff(request)
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied
    try:
        validate_session_id(session_id)
    except InvalidSessionId as exc:
        raise Http404(str(exc)) from None
    coord = coordinator(session_id)
    current = async_to_sync(coord.get_state_versions)(keep_invalid=True)
    if async_to_sync(session_index().get_session)(session_id) is None:
        raise Http404(f"No session {session_id!r}")
    refusal = None  # why the core refused a save, when no field is to blame
    if request.method == "POST":
        formset = StateFormSet(request.POST, prefix=STATE_PREFIX)
        new = NewKeyForm(request.POST, prefix="new")
        if formset.is_valid() and new.is_valid():
            try:
                return _save(request, session_id, formset, new)
            except SaveRefused as refused:
                formset, refusal = _refused_formset(session_id, formset, new, refused)
    else:
        initial = [_row_initial(k, v, version) for k, (v, version) in current.items()]
        formset = StateFormSet(initial=initial, prefix=STATE_PREFIX)
        new = NewKeyForm(prefix="new")
    has_errors = request.method == "POST" and bool(
        refusal or formset.total_error_count() or new.errors
    )
    context = {
        **admin.site.each_context(request),
        "title": f"Shared state of {session_id}",
        "session_id": session_id,
        "formset": formset,
        "new": new,
        "errors": has_errors,
        "refusal": refusal,
        "app_label": "coordination",
    }
    return TemplateResponse(
        request, "admin/coordination/state.html", context, status=400 if has_errors else 200
    )


def _save(
    request: HttpRequest, session_id: str, formset: StateFormSet, new: NewKeyForm
) -> HttpResponse:
    """Write what changed in one compare-and-set, audited either way; a redirect when saved
    (or nothing changed), ``SaveRefused`` when the core refused it."""
    changes: dict[str, Any] = {}
    expected: dict[str, int] = {}
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for form in formset.forms:
        data = form.cleaned_data
        if data.get("change") is None:
            continue
        key = data["state_key"]
        changes[key], expected[key] = data["change"], data["version"]
        before[key] = data["original_value"]
        after[key] = None if data["change"] is DELETE else data["change"]
    new_key = new.cleaned_data.get("key")
    if new_key:
        changes[new_key], expected[new_key] = new.cleaned_data["new_value"], 0  # must not exist
        before[new_key], after[new_key] = None, new.cleaned_data["new_value"]
    if not changes:
        messages.info(request, "Nothing changed.")
        return HttpResponseRedirect(_state_url(session_id))
    try:
        async_to_sync(coordinator(session_id).update_state)(
            changes, expected_versions=expected, by=f"human:{request.user.get_username()}"
        )
    except VersionConflict as exc:
        mine = changes.get(exc.key)
        mine_text = "deleted" if mine is DELETE else json_text(mine)
        _audit(request, session_id, before, after, "refused", str(exc))
        raise SaveRefused(
            exc.key,
            f"Changed by someone else since you opened this page. Yours: "
            f"{cut_chars(mine_text, SHOWN_CONFLICT_CHARS)}; now: "
            f"{cut_chars(json_text(exc.current_value), SHOWN_CONFLICT_CHARS)} "
            f"(version {exc.actual}). Nothing was saved; the form shows the current values.",
        ) from None
    except CoordinationError as exc:
        raise SaveRefused(None, clean_text(str(exc))) from None
    _audit(request, session_id, before, after, "done", f"{len(changes)} key(s)")
    messages.success(
        request, f"Saved {len(changes)} change(s); agents received STATE_CHANGED events."
    )
    return HttpResponseRedirect(_state_url(session_id))


def _refused_formset(
    session_id: str, formset: StateFormSet, new: NewKeyForm, refused: SaveRefused
) -> tuple[StateFormSet, str | None]:
    """After a refused save, the formset to show and the page's own error, if any. A version
    conflict shows the current values with the error on the key that changed (the new key's
    row when that one now exists); any other refusal keeps the form as sent."""
    if refused.key is None:
        return formset, refused.message
    current = async_to_sync(coordinator(session_id).get_state_versions)(keep_invalid=True)
    fresh = _bound_to(current)
    if refused.key == new.cleaned_data.get("key"):
        new.add_error("key", refused.message)
        return fresh, None
    row = next((f for f in fresh.forms if f.cleaned_data.get("state_key") == refused.key), None)
    if row is None:  # deleted meanwhile: no row to put it on
        return fresh, refused.message
    row.add_error("value", refused.message)
    return fresh, None


def _audit(
    request: HttpRequest,
    session_id: str,
    before: dict[str, Any],
    after: dict[str, Any],
    outcome: str,
    detail: str,
) -> None:
    AuditEntry.objects.create(
        actor=request.user,
        actor_name=request.user.get_username(),
        action=AuditEntry.Action.STATE_EDIT,
        session_id=session_id,
        # lone surrogates replaced: every database can store the entry (PostgreSQL's jsonb
        # refuses them), and the audit page can show it
        before=clean_deep(before),
        after=clean_deep(after),
        outcome=outcome,
        detail=clean_text(detail)[:2000],
        client_address=request.META.get("REMOTE_ADDR"),
    )
    async_to_sync(announce_audit)(session_id)


def _state_url(session_id: str) -> str:
    """The editor's own URL, built from the id (``request.path`` is the decoded path: sent
    back as a Location it could name another session)."""
    return reverse("admin:coordination_session_state", args=[session_id])


# -- the admin site: the sessions pages' URLs and their place in the index and sidebar ------------


def _install_sessions_pages(site: admin.AdminSite) -> None:
    """Mount the sessions pages at /admin/coordination/sessions/ and list them with the
    coordination app's models (index page, app page and sidebar)."""
    site_urls, site_app_list = site.get_urls, site.get_app_list

    def get_urls():
        view = site.admin_view
        return [
            path("coordination/sessions/", view(sessions_view), name="coordination_sessions"),
            path(
                # the id as one path segment: "zz/../victim" must not edit "victim"
                f"coordination/sessions/<{SID}:session_id>/state/",
                view(state_view),
                name="coordination_session_state",
            ),
            *site_urls(),
        ]

    def get_app_list(request, app_label=None):
        apps = site_app_list(request, app_label)
        if not request.user.is_staff or app_label not in (None, "coordination"):
            return apps
        entry = {
            "name": "Sessions (live, from Redis)",
            "object_name": "LiveSession",
            "perms": {"add": False, "change": False, "delete": False, "view": True},
            "admin_url": reverse("admin:coordination_sessions", current_app=site.name),
            "add_url": None,
            "view_only": True,
        }
        app = next((a for a in apps if a["app_label"] == "coordination"), None)
        if app is None:  # a staff member with no permission on the app's models
            app = {
                "name": "Coordination",
                "app_label": "coordination",
                "app_url": reverse("admin:coordination_sessions", current_app=site.name),
                "has_module_perms": True,
                "models": [],
            }
            apps = sorted([*apps, app], key=lambda a: a["name"].lower())
        app["models"] = sorted([*app["models"], entry], key=lambda m: m["name"])
        return apps

    site.get_urls, site.get_app_list = get_urls, get_app_list


_install_sessions_pages(admin.site)
