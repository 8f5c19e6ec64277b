"""The view behind the session page's approval buttons: POST /act/decide/<session>/.

Kept apart from ``approvals_ui`` (context and form, imported by ``fragments``) because it
depends on the intervention machinery, which itself depends on ``fragments``.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django.views.decorators.vary import vary_on_headers

from coordination.core import InvalidSessionId
from coordination.core.keys import validate_session_id
from coordination.dashboard.action_views import _actor_or_none, _forbidden
from coordination.dashboard.approvals import DecisionForm, session_approvals_context
from coordination.dashboard.fragments import recent_audit, session_detail_context
from coordination.foundation.core_clients import session_index
from coordination.supervision import approvals as approval_actions
from coordination.supervision.interventions import InterventionRefused


@require_POST
@vary_on_headers("HX-Request")  # a fragment for htmx, a redirect or page otherwise
async def decide_view(request: HttpRequest, session_id: str) -> HttpResponse:
    """POST /act/decide/<session>/: approve, reject or approve with edited arguments."""
    actor = await _actor_or_none(request)
    if actor is None:
        return _forbidden(request)
    try:
        validate_session_id(session_id)
    except InvalidSessionId as exc:
        return HttpResponseBadRequest(f"Bad session id: {exc}", content_type="text/plain")
    form = DecisionForm(request.POST)
    htmx = bool(request.htmx)
    if not form.is_valid():
        message, ok = "Nothing was decided: see the form's errors.", False
        if not htmx:
            return await _full_page(request, session_id, form, message, status=400)
    else:
        data = form.cleaned_data
        approved = data["decision"] != "reject"
        try:
            message = await approval_actions.decide(
                actor,
                session_id,
                data["approval_id"],
                approved,
                message=data.get("message") or None,
                args=data["edited_args"] if data["decision"] == "approve_edited" else None,
            )
            ok, form = True, None
        except InterventionRefused as exc:
            message, ok, form = str(exc), False, None
        if not htmx:
            (messages.success if ok else messages.error)(request, message)
            return redirect(reverse("coordination:session", args=[session_id]))
    context = await session_approvals_context(session_id, form)
    context.update(
        result_message=message,
        result_ok=ok,
        oob=True,
        can_intervene=True,
        s={"session_id": session_id},
    )
    return render(request, "coordination/_approvals.html#decide-response", context)


async def _full_page(
    request: HttpRequest, session_id: str, form: DecisionForm, message: str, status: int
) -> HttpResponse:
    """The session page with the form's errors and the supervisor's input kept (no script)."""
    summary = await session_index().get_session(session_id)
    if summary is None:
        return HttpResponse(message, status=404, content_type="text/plain")
    user = await request.auser()
    context = await session_detail_context(session_id, summary)
    context.update(await session_approvals_context(session_id, form))
    context.update(
        nav="sessions",
        can_intervene=True,
        me=f"human:{user.get_username()}",
        audit=await recent_audit(session_id),
        result_message=message,
        result_ok=False,
    )
    return render(request, "coordination/session_detail.html", context, status=status)
