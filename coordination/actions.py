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

from . import interventions
from .fragments import live_header_context
from .interventions import Actor, InterventionRefused

PERMISSION = "coordination.intervene"


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


async def dispatch(action: str, actor: Actor, session_id: str, form) -> str:
    """Run one intervention named as in the URLs; ``form`` is the POST data (or a dict)."""
    match action:
        case "take-over":
            return await interventions.take_over(actor, session_id)
        case "hand-back":
            return await interventions.hand_back(
                actor, session_id, form.get("to_agent", ""), form.get("expected_controller")
            )
        case "release":
            return await interventions.release(actor, session_id, form.get("expected_owner"))
        case "reassign":
            to_agent = form.get("to_agent_typed", "").strip() or form.get("to_agent", "")
            return await interventions.reassign(
                actor, session_id, to_agent, form.get("expected_owner")
            )
        case "reply":
            return await interventions.reply(actor, session_id, form.get("text", ""))
        case "note":
            return await interventions.add_note(actor, session_id, form.get("text", ""))
        case "close":
            return await interventions.close(actor, session_id)
    raise Http404(f"Unknown action {action!r}")


@require_POST
async def act(request: HttpRequest, action: str, session_id: str) -> HttpResponse:
    actor = await _actor_or_none(request)
    if actor is None:
        return _forbidden(request)
    try:
        message, ok = await dispatch(action, actor, session_id, request.POST), True
    except InterventionRefused as exc:
        message, ok = str(exc), False
    if request.headers.get("HX-Request") != "true":
        (messages.success if ok else messages.error)(request, message)
        return redirect(reverse("coordination:session", args=[session_id]))
    context = await live_header_context(session_id, actor.user, can_intervene=True)
    if context is None:
        return HttpResponseNotFound(message, content_type="text/plain")
    context.update(result_message=message, result_ok=ok, oob=True)
    return render(request, "coordination/session_detail.html#action-response", context)


@require_POST
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
    if request.headers.get("HX-Request") == "true":
        response = HttpResponse(status=204)
        response["HX-Redirect"] = target
        return response
    return redirect(target)
