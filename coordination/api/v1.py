"""The JSON API, /api/v1/: sessions, events, agents, escalations and every intervention.

Bearer tokens (``manage.py create_api_token``), separate from the browser login; the same
permission (``coordination.intervene``) and the same audited operations as the pages. The
OpenAPI schema is served at /api/v1/openapi.json.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any, Literal

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import path, re_path, reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from ninja import Field, NinjaAPI, Query, Schema
from ninja.errors import AuthorizationError
from ninja.openapi.docs import Swagger
from ninja.security import HttpBearer

from coordination.api import approvals as api_approvals
from coordination.api.schemas import schema_from_dataclass
from coordination.core.errors import CoordinationError, InvalidSessionId, RedisUnavailable
from coordination.core.events import Event, decode_stored_json
from coordination.core.index import AgentPresence, SessionSummary
from coordination.core.keys import STATUSES, validate_session_id
from coordination.foundation.core_clients import coordinator, read_state, session_index
from coordination.foundation.display import clean_deep, json_text
from coordination.models import ApiToken
from coordination.supervision import interventions
from coordination.supervision.actions import PERMISSION, bulk_refusal, dispatch
from coordination.supervision.interventions import Actor, InterventionRefused
from coordination.supervision.limits import MAX_BULK, MAX_REASON, MAX_TEXT

MAX_TOKEN_LENGTH = 200
# One response's payloads (an events page, a session's state) stop past this many bytes.
API_RESPONSE_BYTES = 8 * 1024 * 1024
MAX_STATE_KEYS = 1000

# The core's statuses, as a type the schema lists (Literal[("a", "b")] is Literal["a", "b"]).
Status = Literal[STATUSES]  # type: ignore[valid-type]

Action = Literal["take-over", "hand-back", "release", "reassign", "reply", "note", "close"]
BulkAction = Literal["release", "reassign", "close", "hand-back"]


class BearerToken(HttpBearer):
    def __call__(self, request: HttpRequest):
        """As ninja's, minus its DEBUG log line that prints a wrong-scheme header in full (a
        token sent as ``Token coord_…`` would land in the logs). Nothing here logs the header."""
        scheme, _, token = request.headers.get(self.header, "").partition(" ")
        if scheme.lower() != self.openapi_scheme:
            return None
        return self.authenticate(request, token.strip())

    def authenticate(self, request: HttpRequest, token: str):
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        row = ApiToken.objects.select_related("user").filter(digest=ApiToken.hash(token)).first()
        if row is None or not row.user.is_active:
            return None
        now = timezone.now()
        if row.last_used is None or now - row.last_used > timedelta(minutes=1):
            ApiToken.objects.filter(pk=row.pk).update(last_used=now)
        return row.user


def _token_or_login(view):
    """The schema is for API clients (token) and signed-in users; nobody else."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        user = None
        if scheme.lower() == "bearer":
            user = BearerToken().authenticate(request, token.strip())
        if user is None and not request.user.is_authenticated:
            return JsonResponse({"detail": "Unauthorized"}, status=401)
        return view(request, *args, **kwargs)

    return wrapped


class LocalSwagger(Swagger):
    """Swagger UI from this site's static files (static/vendor/swagger-ui), started by
    static/coordination/api-docs.js: ninja's own page loads it from a CDN or runs inline code,
    which the site's Content-Security-Policy refuses."""

    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs: Any) -> HttpResponse:
        self.settings["url"] = self.get_openapi_url(api, kwargs)
        return render(
            request, "api_docs.html", {"api": api, "swagger_settings": dict(self.settings)}
        )


api = NinjaAPI(
    title="coordinator API",
    version="1",
    description=(
        "Sessions, events, agents and escalations of the coordination core, and the "
        "supervisor interventions. Authenticate with `Authorization: Bearer <token>` "
        "(`manage.py create_api_token <user>`). Interventions need the supervisors role."
    ),
    auth=BearerToken(),
    urls_namespace="api-v1",
    openapi_url="/openapi.json",
    docs_url="/docs",
    docs=LocalSwagger(),
    docs_decorator=_token_or_login,
)


# -- schemas ----------------------------------------------------------------------------------


class ErrorOut(Schema):
    detail: str


# Every field of the core's SessionSummary, as it is (tests/web/test_api_schemas.py).
SessionOut = schema_from_dataclass(
    SessionSummary,
    "SessionOut",
    descriptions={
        "last_activity": "Unix time of the last event",
        "escalation_queue": (
            'The queue the escalation named in data["queue"]; null is the default queue'
        ),
        "fence": "The last fencing token granted to a claim (each claim gets a higher one)",
        "pending_approvals": "Approvals requested and not yet decided (nor expired)",
    },
)


class SessionPageOut(Schema):
    items: list[SessionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class SessionDetailOut(SessionOut):  # type: ignore[misc,valid-type]
    state: dict[str, Any]


# The core's Event minus ``extra`` (the reader's notes on a malformed entry, not the agent's
# data); its type is sent as text whether or not it is one of the core's EventTypes.
EventOut = schema_from_dataclass(
    Event, "EventOut", exclude=frozenset({"extra"}), types={"type": str}
)


class EventPageOut(Schema):
    items: list[EventOut]
    next_after: str | None = Field(description="Pass as `after` to read on")


# The core's AgentPresence minus ``extra`` (whatever else a heartbeat carried, unvetted).
AgentOut = schema_from_dataclass(AgentPresence, "AgentOut", exclude=frozenset({"extra"}))


class EscalationsOut(Schema):
    count: int
    items: list[SessionOut]


class SessionFilter(Schema):
    status: Status | None = None
    agent: str | None = Field(None, max_length=256, description="Sessions this agent owns")
    q: str | None = Field(None, max_length=256, description="Session id prefix")
    cursor: str | None = Field(None, max_length=512)
    limit: int = Field(50, ge=1, le=200)


class InterventionIn(Schema):
    to_agent: str | None = Field(None, max_length=256, description="reassign, hand-back")
    expected_owner: str | None = Field(
        None, max_length=256, description="release, reassign: refuse if the owner changed"
    )
    expected_controller: str | None = Field(
        None, max_length=256, description="hand-back: refuse if someone else took over"
    )
    text: str | None = Field(None, max_length=MAX_TEXT, description="reply, note")
    resolution: str | None = Field(
        None, max_length=MAX_TEXT, description="hand-back: what the human decided, for the agent"
    )
    force: bool | None = Field(
        None, description="reassign: accept an agent that has never reported in"
    )
    reason: str | None = Field(
        None,
        max_length=MAX_REASON,
        description="take-over, release, reassign, close: why (shown in the audit trail)",
    )


class InterventionOut(Schema):
    session_id: str
    action: str
    ok: bool
    message: str
    session: SessionOut | None


class BulkIn(InterventionIn):
    session_ids: list[str] = Field(min_length=1, max_length=MAX_BULK)


class BulkOut(Schema):
    done: int
    refused: int
    results: list[InterventionOut]


class ClaimNextOut(Schema):
    session_id: str | None
    message: str


# -- errors -----------------------------------------------------------------------------------


def _error(request, status: int, detail: str):
    return api.create_response(request, {"detail": detail}, status=status)


@api.exception_handler(RedisUnavailable)
def _redis_unavailable(request, exc):
    return _error(request, 503, str(exc))


@api.exception_handler(CoordinationError)
def _coordination_error(request, exc):
    return _error(request, 400, str(exc))


@api.exception_handler(InterventionRefused)
def _refused(request, exc):
    return _error(request, 409, str(exc))


def _session_id(session_id: str) -> str:
    try:
        return validate_session_id(session_id)
    except InvalidSessionId as exc:
        raise CoordinationError(f"bad session id: {exc}") from None


async def _require_intervene(request) -> Actor:
    user = request.auth
    if not await sync_to_async(user.has_perm)(PERMISSION):
        # ninja's own 403: its handler answers {"detail": message}, like every error here
        raise AuthorizationError(message="This token's user may view sessions but not act on them.")
    return Actor(user, request.META.get("REMOTE_ADDR") or None)


# -- reads ------------------------------------------------------------------------------------


@api.get(
    "/sessions/",
    response={200: SessionPageOut, 400: ErrorOut, 401: ErrorOut, 503: ErrorOut},
    tags=["sessions"],
)
async def list_sessions(request, filters: Query[SessionFilter]):
    """Sessions, most recently active first (by id when filtering by `q`), a page at a time."""
    try:
        page = await session_index().list_sessions(
            filters.status,
            filters.cursor,
            filters.limit,
            owner=filters.agent,
            prefix=filters.q,
        )
    except ValueError as exc:
        raise CoordinationError(str(exc)) from None
    return {"items": page.sessions, "next_cursor": page.next_cursor}


@api.get(
    "/sessions/{path:session_id}",
    response={200: SessionDetailOut, 400: ErrorOut, 401: ErrorOut, 404: ErrorOut, 503: ErrorOut},
    tags=["sessions"],
)
async def session_detail(request, session_id: str):
    """One session with its shared state."""
    summary = await session_index().get_session(_session_id(session_id))
    if summary is None:
        return 404, {"detail": f"no session {session_id!r} (unknown or expired)"}
    return {**_as_dict(summary), "state": await _state(session_id)}


async def _state(session_id: str) -> dict[str, Any]:
    """The shared state, read without trusting it: a value that is not JSON (written straight
    into Redis) is returned as ``{"(invalid value)": <text>, "why": ...}``; past
    ``API_RESPONSE_BYTES`` in all, values are left out and say so."""
    values, _versions, total = await read_state(session_id, MAX_STATE_KEYS)
    state, budget = {}, API_RESPONSE_BYTES
    for key in sorted(values):
        raw = values[key]
        budget -= len(raw)
        if budget < 0:
            state[key] = {"(omitted)": f"{len(raw)} characters, past this response's limit"}
            continue
        value, why = decode_stored_json(raw)
        state[key] = value if why is None else {"(invalid value)": value, "why": why}
    if total > len(values):
        state["(omitted)"] = f"{total - len(values)} more keys"
    return clean_deep(state)


@api.get(
    "/events/{path:session_id}",
    response={200: EventPageOut, 400: ErrorOut, 401: ErrorOut, 404: ErrorOut, 503: ErrorOut},
    tags=["sessions"],
)
async def session_events(
    request,
    session_id: str,
    after: str = Query(
        "-", max_length=64, description="Events after this id ('-': from the start)"
    ),
    limit: int = Query(100, ge=1, le=1000),
):
    """A session's events, oldest first, after an event id."""
    coord = coordinator(_session_id(session_id))
    events = await coord.events(after=after, limit=limit)
    if not events and await session_index().get_session(session_id) is None:
        return 404, {"detail": f"no session {session_id!r} (unknown or expired)"}
    # Bounded in bytes as well as in events: a page stops once its payloads pass
    # API_RESPONSE_BYTES (always at least one event), and next_after continues from there.
    items, budget = [], API_RESPONSE_BYTES
    for event in events:
        if items and budget < 0:
            break
        item = clean_deep(event.as_dict())
        item["type"] = item["type"] if isinstance(item["type"], str) else str(item["type"])
        budget -= len(json_text(item["data"], tight=True))
        items.append(item)
    more = len(items) < len(events) or len(events) == limit
    return {"items": items, "next_after": items[-1]["id"] if more else None}


@api.get("/agents/", response={200: list[AgentOut], 401: ErrorOut, 503: ErrorOut}, tags=["agents"])
async def agents(request):
    """Agents seen by heartbeat or events, most recent first. Presence fields are normalised
    by the index (a capability that is not a string is shown as ``(invalid: ...)``)."""
    fields = AgentOut.model_fields
    return [{name: getattr(a, name) for name in fields} for a in await session_index().agents()]


@api.get(
    "/escalations/",
    response={200: EscalationsOut, 401: ErrorOut, 503: ErrorOut},
    tags=["escalations"],
)
async def escalations(request, limit: int = Query(50, ge=1, le=200)):
    """The escalation queue, longest waiting first."""
    index = session_index()
    return {"count": await index.escalation_count(), "items": await index.escalation_queue(limit)}


# -- interventions ----------------------------------------------------------------------------


async def _intervene(actor: Actor, action: str, session_id: str, body: InterventionIn) -> dict:
    form = {k: v for k, v in body.dict().items() if v is not None and k != "session_ids"}
    try:
        message, ok = await dispatch(action, actor, session_id, form), True
    except InterventionRefused as exc:
        message, ok = str(exc), False
    summary = None
    try:
        validate_session_id(session_id)
        summary = await session_index().get_session(session_id)
    except InvalidSessionId:
        pass
    return {
        "session_id": session_id,
        "action": action,
        "ok": ok,
        "message": message,
        "session": summary,
    }


@api.post(
    "/interventions/{action}/{path:session_id}",
    response={
        200: InterventionOut,
        400: ErrorOut,
        401: ErrorOut,
        403: ErrorOut,
        409: InterventionOut,
        503: ErrorOut,
    },
    tags=["interventions"],
)
async def intervene(request, action: Action, session_id: str, body: InterventionIn):
    """Act on one session, exactly as the dashboard's buttons do (audited, race-safe).
    A refusal (someone else acted first, unknown session, ...) is a 409 with the reason."""
    actor = await _require_intervene(request)
    result = await _intervene(actor, action, session_id, body)
    return (200 if result["ok"] else 409), result


@api.post(
    "/bulk/{action}",
    response={200: BulkOut, 400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 503: ErrorOut},
    tags=["interventions"],
)
async def bulk(request, action: BulkAction, body: BulkIn):
    """Act on many sessions; each one is its own race-safe, audited step with its own result."""
    actor = await _require_intervene(request)
    refusal = bulk_refusal(action, body.to_agent)
    if refusal:  # once for the request, as on the sessions page
        return 400, {"detail": refusal}
    results = await interventions.for_each(
        body.session_ids, lambda sid: _intervene(actor, action, sid, body)
    )
    done = sum(1 for r in results if r["ok"])
    return {"done": done, "refused": len(results) - done, "results": results}


@api.post(
    "/escalations/claim-next",
    response={200: ClaimNextOut, 401: ErrorOut, 403: ErrorOut, 503: ErrorOut},
    tags=["escalations"],
)
async def claim_next(request):
    """Take over the longest-waiting escalated session (null when the queue is empty)."""
    actor = await _require_intervene(request)
    session_id, message = await interventions.claim_next_escalation(actor)
    return {"session_id": session_id, "message": message}


# /approvals/: pending tool-call approvals and decisions on them (coordination/api/approvals.py)
api.add_router("/approvals", api_approvals.router)


def _as_dict(summary) -> dict[str, Any]:
    return {name: getattr(summary, name) for name in SessionOut.model_fields}


def urls():
    """The API's URL patterns. The views answer 401 themselves (bearer token), so the
    site-wide LoginRequiredMiddleware, which would redirect to the login page, skips them."""
    patterns, app_name, namespace = api.urls
    patterns = [
        path("", _index, name="index"),  # before ninja's own root view, which answers 404
        *patterns,
        re_path(r"^[\s\S]*$", _not_found),  # [\s\S]: ids may hold newlines
    ]
    for pattern in _walk(patterns):
        pattern.callback.login_required = False
    return patterns, app_name, namespace


@csrf_exempt  # token clients send no CSRF token; this view changes nothing
def _index(request: HttpRequest) -> HttpResponse:
    """/api/v1/ itself: a browser goes to the interactive docs, a client gets where things are."""
    docs = reverse("api-v1:openapi-view")
    if "text/html" in request.headers.get("Accept", ""):
        return redirect(docs)
    return JsonResponse(
        {
            "title": api.title,
            "version": api.version,
            "docs": docs,
            "openapi": reverse("api-v1:openapi-json"),
        }
    )


@csrf_exempt  # token clients send no CSRF token; this view changes nothing
def _not_found(request: HttpRequest, *args, **kwargs) -> JsonResponse:
    """JSON, not the site's HTML 404, for any other path under /api/v1/."""
    return JsonResponse({"detail": f"no API endpoint at {request.path!r}"}, status=404)


def _walk(patterns):
    for pattern in patterns:
        if hasattr(pattern, "url_patterns"):
            yield from _walk(pattern.url_patterns)
        else:
            yield pattern
