"""Dashboard views: thin and async; they read the core and render the shared partials."""

from __future__ import annotations

import asyncio
import dataclasses
import functools

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponsePermanentRedirect,
    JsonResponse,
)
from django.shortcuts import redirect, render
from django.urls import Resolver404, resolve, reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from coordination.core import InvalidCursor, InvalidSessionId, RedisUnavailable, redact_url
from coordination.core.connection import UNAVAILABLE_ERRORS
from coordination.core.events import decode_stored_json, event_from_fields, is_stream_id
from coordination.core.keys import STATUSES, validate_session_id
from coordination.dashboard import saved_filters, session_list, trends
from coordination.dashboard.action_views import BULK_ACTIONS
from coordination.dashboard.fragments import (
    SESSIONS_PAGE,
    TIMELINE_PAGE,
    SessionFilters,
    dom_id,
    event_context,
    overview_context,
    recent_audit,
    session_detail_context,
    session_row_context,
)
from coordination.foundation.core_clients import coordinator, session_index
from coordination.foundation.display import cut_bytes, json_text, short_text
from coordination.realtime.relay import relay_health


async def _can_intervene(request: HttpRequest) -> bool:
    user = await request.auser()
    return await sync_to_async(user.has_perm)("coordination.intervene")


def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """Any URL no other pattern matched: our 404 page in every mode (with ``DEBUG`` on, Django
    would show its technical page, which lists the URL patterns and breaks our CSP). It is the
    last pattern, so it keeps ``APPEND_SLASH``'s redirect itself: CommonMiddleware only redirects
    paths that match nothing, and this matches everything."""
    if settings.APPEND_SLASH and not request.path_info.endswith("/"):
        try:
            match = resolve(request.path_info + "/")
        except Resolver404:
            match = None
        if match is not None and match.url_name != "not-found":
            return HttpResponsePermanentRedirect(request.get_full_path(force_append_slash=True))
    return render(request, "404.html", status=404)


def styled_404(view):
    """Answer a view's ``Http404`` with our own 404 page, in every mode: with ``DEBUG`` on,
    Django would show its technical page (and its inline styles break our CSP) for a session
    that merely expired."""

    @functools.wraps(view)
    async def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            return await view(request, *args, **kwargs)
        except Http404 as exc:
            return render(request, "404.html", {"exception": str(exc)}, status=404)

    return wrapper


@require_GET
async def overview(request: HttpRequest) -> HttpResponse:
    context = await overview_context(session_index())
    context.update(
        nav="overview",
        redis_url_display=redact_url(settings.REDIS_URL),
        can_intervene=await _can_intervene(request),
    )
    return render(request, "coordination/overview.html", context)


@require_GET
async def sessions(request: HttpRequest) -> HttpResponse:
    try:
        session_list.check_query(request.GET)
    except session_list.BadQuery as exc:
        return HttpResponseBadRequest(f"Bad sessions query: {exc}", content_type="text/plain")
    filters = SessionFilters.from_query(request.GET)
    user = await request.auser()
    me = f"human:{user.get_username()}"
    if filters.view == "mine":  # held or taken over by me: the owner the core records for me
        filters = dataclasses.replace(filters, owner=me)
    try:
        page = await session_list.list_page(session_index(), filters, SESSIONS_PAGE, me)
    except (InvalidCursor, ValueError) as exc:
        return HttpResponseBadRequest(f"Bad sessions query: {exc}", content_type="text/plain")
    context = {
        "nav": "sessions",
        "filters": filters,
        "rows": [session_row_context(s) for s in page.sessions],
        "page": page,
        "next_query": filters.query_string(cursor=page.next_cursor) if page.next_cursor else None,
        "first_page": filters.cursor is None,
        # new activity goes on top only where the newest activity is on top
        "live_on_top": filters.cursor is None
        and filters.effective_sort == session_list.DEFAULT_SORT
        and not filters.text,
        "ws_query": filters.query_string(cursor=None),
        # the rows the live socket may redraw or delete (see SessionsConsumer)
        "shown_rows": ",".join(
            dom_id(s.session_id).removeprefix("session-") for s in page.sessions
        ),
        "statuses": STATUSES,
        "can_intervene": await _can_intervene(request),
        "bulk_actions": BULK_ACTIONS.items(),
        "saved_filters": await saved_filters.user_filters(user),
        "views": session_list.view_links(filters),
        "columns": session_list.column_links(filters),
        "sort_options": session_list.sort_options(filters),
        "sort_label": session_list.SORTS[filters.effective_sort],
        "search_events": session_list.SEARCH_EVENTS,
        "search_kib": session_list.SEARCH_EVENT_BYTES // 1024,
        "search_scan": session_list.SEARCH_SCAN_LIMIT,
        "max_search": session_list.MAX_SEARCH_CHARS,
    }
    return render(request, "coordination/sessions.html", context)


@require_GET
@never_cache
@vary_on_headers("HX-Request")  # a fragment for htmx, a page otherwise
async def trends_page(request: HttpRequest) -> HttpResponse:
    """/trends/: the relay's rollups drawn as SVG; htmx refreshes get the body alone."""
    context = await trends.trends_context(session_index())
    context["nav"] = "trends"
    template = "coordination/trends.html"
    if request.htmx:
        template += "#trends-body"
    return render(request, template, context)


@require_POST
async def save_filter(request: HttpRequest) -> HttpResponse:
    query = SessionFilters.from_query(request.POST).query_string(cursor=None)
    try:
        replace = request.POST.get("replace") == "on"
        saved = await saved_filters.save_filter(
            await request.auser(), request.POST.get("name", ""), request.POST, replace=replace
        )
    except saved_filters.FilterNotSaved as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request, f"{'Replaced' if replace else 'Saved'} the filter {saved.name!r}."
        )
    return redirect(reverse("coordination:sessions") + (f"?{query}" if query else ""))


@require_POST
@styled_404
async def delete_filter(request: HttpRequest, pk: int) -> HttpResponse:
    if not await saved_filters.delete_filter(await request.auser(), pk):
        raise Http404("No such saved filter of yours.")
    messages.success(request, "Deleted the saved filter.")
    return redirect(reverse("coordination:sessions"))


async def _summary_or_404(session_id: str):
    try:
        validate_session_id(session_id)
    except InvalidSessionId as exc:
        raise Http404(str(exc)) from None
    summary = await session_index().get_session(session_id)
    if summary is None:
        raise Http404(f"No session {session_id!r}: it never published an event, or it expired.")
    return summary


@require_GET
@styled_404
async def session_detail(request: HttpRequest, session_id: str) -> HttpResponse:
    summary = await _summary_or_404(session_id)
    context = await session_detail_context(session_id, summary)
    user = await request.auser()
    context.update(
        nav="sessions",
        can_intervene=await _can_intervene(request),
        me=f"human:{user.get_username()}",
        audit=await recent_audit(session_id),
    )
    return render(request, "coordination/session_detail.html", context)


@require_GET
@vary_on_headers("HX-Request")  # a fragment for htmx, a page otherwise: caches must keep both
@styled_404
async def timeline(request: HttpRequest, session_id: str) -> HttpResponse:
    """Older events of a session, newest first (the timeline's infinite scroll)."""
    summary = await _summary_or_404(session_id)
    before = request.GET.get("before") or None
    try:
        events = await coordinator(session_id).events(
            newest_first=True, limit=TIMELINE_PAGE, before=before
        )
    except InvalidCursor as exc:
        return HttpResponseBadRequest(f"Bad timeline query: {exc}", content_type="text/plain")
    context = {
        "s": summary,
        "events": [event_context(e) for e in events],
        "older_cursor": events[-1].id if len(events) == TIMELINE_PAGE else None,
    }
    template = (
        "coordination/session_detail.html#timeline-page"
        if request.htmx
        else "coordination/timeline.html"
    )
    return render(request, template, context)


@require_GET
@vary_on_headers("HX-Request")  # a fragment for htmx, a page otherwise: caches must keep both
async def agents(request: HttpRequest) -> HttpResponse:
    presence = await session_index().agents(limit=500)
    context = {
        "nav": "agents",
        "agents": presence,
        "stale_after": int(settings.COORDINATION_AGENT_STALE_AFTER),
    }
    template = (
        "coordination/agents.html#agents-table" if request.htmx else "coordination/agents.html"
    )
    return render(request, template, context)


@require_GET
@styled_404
async def payload(request: HttpRequest) -> HttpResponse:
    """One event's payload (``?session=&event=``) or one state value (``?session=&key=``),
    whole: the timeline and the state table cut large values and link here. Escaped like any
    page, and bounded by the core's payload limit (a value written around the core is cut)."""
    session_id = request.GET.get("session", "")
    event_id, key = request.GET.get("event"), request.GET.get("key")
    try:
        validate_session_id(session_id)
    except InvalidSessionId as exc:
        return HttpResponseBadRequest(f"Bad session id: {exc}", content_type="text/plain")
    coord = coordinator(session_id)
    keys = coord.keys.session(session_id)
    if event_id is not None:
        if not is_stream_id(event_id):
            return HttpResponseBadRequest(
                "Bad event id: expected one like '1700000000000-0'", content_type="text/plain"
            )
        rows = await coord.call(coord.redis.xrange(keys.events, event_id, event_id, count=1))
        if not rows:
            raise Http404(f"No event {event_id} in session {session_id!r} (or it expired).")
        event = event_from_fields(session_id, rows[0][0], rows[0][1])
        value, why, what = event.data, event.extra.get("invalid"), f"Payload of event {event_id}"
    elif key is not None:
        raw = await coord.call(coord.redis.hget(keys.state, key))
        if raw is None:
            raise Http404(f"No state key {key!r} in session {session_id!r}.")
        value, why = decode_stored_json(raw)
        what = f"State value {short_text(key)}"
    else:
        return HttpResponseBadRequest("Name an event or a state key.", content_type="text/plain")
    limit = coord.max_payload_bytes
    text = json_text(value, pretty=True)
    if len(text.encode("utf-8")) > limit:
        text = json_text(value, tight=True)
    size = len(text.encode("utf-8"))
    text, cut = cut_bytes(text, limit)
    context = {
        "session_id": session_id,
        "what": what,
        "why": why,
        "text": text,
        "size": size,
        "cut": cut,
        "limit": limit,
    }
    return render(request, "coordination/payload.html", context)


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:  # any driver error means "not healthy"; the probe must not raise
        return False


@login_not_required
@never_cache
@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when Redis and the database answer and live updates flow; 503 naming the failing
    part otherwise. In a server process (ASGI lifespan) it also reports this process's relay
    (``"relay": "stopped"`` when its task died) and whether any process holds the relay lease
    (none for longer than a lease lasts: no live updates anywhere). No address, host or
    worker name is shown."""
    checks = {"redis": "ok", "database": "ok"}
    redis = session_index().redis
    try:
        await asyncio.wait_for(redis.ping(), timeout=2)
    except (RedisUnavailable, TimeoutError, *UNAVAILABLE_ERRORS):
        checks["redis"] = "unavailable"
    if not await sync_to_async(_database_ok)():
        checks["database"] = "unavailable"
    healthy = all(v == "ok" for v in checks.values())
    relay = await relay_health(redis)
    if relay is not None:
        checks.update(relay[0])
        healthy = healthy and relay[1]
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", **checks}, status=200 if healthy else 503
    )
