"""Views for supervisor actions: POST only (CSRF-checked), permission checked on the server."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseForbidden,
    HttpResponseNotFound,
)
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HttpResponseClientRedirect

from coordination.core import InvalidSessionId
from coordination.core.keys import validate_session_id
from coordination.dashboard.fragments import live_header_context
from coordination.supervision import interventions
from coordination.supervision.actions import PERMISSION, UnknownAction, bulk_refusal, dispatch
from coordination.supervision.interventions import Actor, InterventionRefused
from coordination.supervision.limits import MAX_BULK


def _client_address(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


async def _actor_or_none(request: HttpRequest) -> Actor | None:
    user = await request.auser()
    if not await sync_to_async(user.has_perm)(PERMISSION):
        return None
    return Actor(user, _client_address(request))


def _forbidden(request: HttpRequest) -> HttpResponse:
    return HttpResponseForbidden(
        "You may view sessions but not act on them: ask an administrator for the supervisors role.",
        content_type="text/plain",
    )


@require_POST
@vary_on_headers("HX-Request")  # a fragment for htmx, a redirect otherwise
async def act(request: HttpRequest, action: str, session_id: str) -> HttpResponse:
    actor = await _actor_or_none(request)
    if actor is None:
        return _forbidden(request)
    try:
        message, ok = await dispatch(action, actor, session_id, request.POST), True
    except UnknownAction as exc:
        raise Http404(str(exc)) from None
    except InterventionRefused as exc:
        message, ok = str(exc), False
    if not request.htmx:
        (messages.success if ok else messages.error)(request, message)
        return redirect(reverse("coordination:session", args=[session_id]))
    context = await live_header_context(session_id, actor.user, can_intervene=True)
    if context is None:
        return HttpResponseNotFound(message, content_type="text/plain")
    context.update(result_message=message, result_ok=ok, oob=True)
    return render(request, "coordination/session_detail.html#action-response", context)


@require_POST
@vary_on_headers("HX-Request")  # a client-side redirect for htmx, a 302 otherwise
async def claim_next(request: HttpRequest) -> HttpResponse:
    actor = await _actor_or_none(request)
    if actor is None:
        return _forbidden(request)
    session_id, message = await interventions.claim_next_escalation(actor)
    if session_id is None:
        messages.info(request, message)
        target = reverse("coordination:overview")
    else:
        messages.success(request, message)
        target = reverse("coordination:session", args=[session_id])
    if request.htmx:
        return HttpResponseClientRedirect(target)
    return redirect(target)


BULK_ACTIONS = {
    "release": "Release claims",
    "reassign": "Reassign to…",
    "hand-back": "Hand back to…",
    "close": "Close",
}


def _bulk_form(request: HttpRequest, session_id: str) -> dict[str, str | None]:
    """One session's share of the bulk form: the common target agent, and the owner and
    controller its row showed, so a session that changed since the page was drawn is refused."""
    post = request.POST
    return {
        "to_agent": post.get("to_agent", ""),
        "force": post.get("force"),
        "expected_owner": post.get(f"owner:{session_id}"),
        "expected_controller": post.get(f"controller:{session_id}"),
    }


@require_POST
@vary_on_headers("HX-Request")  # the results fragment for htmx, a page otherwise
async def bulk(request: HttpRequest) -> HttpResponse:
    """Act on the sessions ticked on the sessions list, each in its own race-safe, audited step."""
    actor = await _actor_or_none(request)
    if actor is None:
        return _forbidden(request)
    action = request.POST.get("action", "")
    session_ids = request.POST.getlist("session_ids")
    error = None
    if action not in BULK_ACTIONS:
        error = "Choose what to do with the selected sessions."
    elif not session_ids:
        error = "Select at least one session."
    elif len(session_ids) > MAX_BULK:
        error = f"{len(session_ids)} sessions selected; at most {MAX_BULK} at a time."
    else:
        error = bulk_refusal(action, request.POST.get("to_agent"))

    async def one(session_id: str) -> dict:
        result = {"session_id": session_id, "linkable": _is_session_id(session_id)}
        try:
            message = await dispatch(action, actor, session_id, _bulk_form(request, session_id))
            return {**result, "ok": True, "message": message}
        except InterventionRefused as exc:
            return {**result, "ok": False, "message": str(exc)}

    results = [] if error else await interventions.for_each(session_ids, one)
    context = {
        "bulk_error": error,
        "bulk_results": results,
        "bulk_action": BULK_ACTIONS.get(action, action),
        "bulk_done": sum(r["ok"] for r in results),
    }
    if request.htmx:
        # htmx swaps only 2xx answers; the error is shown in the results area
        return render(request, "coordination/sessions.html#bulk-results", context)
    context["nav"] = "sessions"
    return render(request, "coordination/bulk_results.html", context, status=400 if error else 200)


def _is_session_id(value: str) -> bool:
    try:
        validate_session_id(value)
    except InvalidSessionId:
        return False
    return True
