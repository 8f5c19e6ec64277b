"""Hostile ids, malformed input and secrets, tried as an attacker would.

- Every URL the dashboard renders for a session names exactly that session, whatever the id
  holds (``zz/../victim``, ``..``, ``%2F``, ``?``, ``#``, ``\\``, unicode): checked on the
  reversed URLs, on every URL of the rendered pages, after the browser's (WHATWG) path
  normalisation, and by acting through them.
- Malformed cursors, event ids, limits, websocket frames and admin state edits answer 4xx (or
  a form error that keeps what was typed), never a 500.
- With DEBUG on, error pages show no Redis password, token or database URL.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.test import AsyncClient, RequestFactory
from django.urls import Resolver404, include, path, resolve, reverse
from django.views.debug import technical_500_response
from hypothesis import given, settings
from hypothesis import strategies as st

from coordination import AgentCoordinator, EventType
from coordination.dashboard.session_urls import from_segment, quote_segment, to_segment
from coordination.foundation.error_reports import mask_secrets
from coordination.models import ApiToken
from coordination.realtime.routing import websocket_urlpatterns
from coordinator_site.settings import redis_services

from ..web.conftest import coordination_settings, supervisor, viewer  # noqa: F401

pytestmark = pytest.mark.django_db

VICTIM = "victim"
NASTY_IDS = [
    f"zz/../{VICTIM}",
    f"../{VICTIM}",
    f"./{VICTIM}",
    f"{VICTIM}/..",
    "..",
    ".",
    "...",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "%2e.",
    "%2e",
    f"zz%2F..%2F{VICTIM}",
    "%2F",
    "%25",
    "%41",
    "%",
    "a%2",
    "a/b/c",
    "/leading",
    "trailing/",
    "//evil.example/x",
    "http://evil.example/",
    "?x=1",
    "a?b#c",
    "#frag",
    "a\\..\\victim",
    "\\",
    "..\\",
    "a b",
    "+plus+",
    "{x}:y",
    "x;y",
    "..;",
    "~",
    "@:",
    "ünïcödé",
    "日本/../語",
    "\u202eevil",
    "\uff0e\uff0e",  # fullwidth dots: NFKC would make them ".."
    "a" * 250,
]
# Segments the WHATWG URL parser treats as "." or ".." (case-insensitively).
DOT_SEGMENTS = {".", "..", "%2e", ".%2e", "%2e.", "%2e%2e"}
SESSION_ROUTES = [
    ("coordination:session", ()),
    ("coordination:timeline", ()),
    *[
        ("coordination:act", (a,))
        for a in ("take-over", "hand-back", "release", "reassign", "reply", "note", "close")
    ],
    ("admin:coordination_session_state", ()),
]


def whatwg_path_is_stable(url: str) -> bool:
    """True when a browser keeps this path as it is: no dot segment in any spelling, no
    backslash (a "/" for http URLs), nothing that starts a query or fragment."""
    if "\\" in url or "?" in url or "#" in url or not url.startswith("/") or url.startswith("//"):
        return False
    return not any(seg.lower() in DOT_SEGMENTS for seg in url.split("/"))


def server_resolve(url: str):
    """What the server does with a URL path: percent-decode it once, then resolve it. A path
    only the last catch-all (our 404 page) takes is, for these tests, a path nothing serves."""
    path = unquote(urlsplit(url).path)
    match = resolve(path)
    if match.url_name == "not-found":
        raise Resolver404({"path": path})
    return match


@pytest.mark.parametrize("session_id", NASTY_IDS)
def test_segment_encoding_round_trips(session_id):
    segment = to_segment(session_id)
    assert "/" not in segment and segment not in (".", "..")
    assert from_segment(segment) == session_id
    assert from_segment(unquote(quote_segment(session_id))) == session_id


# Any valid id: no control characters (C0, DEL, C1), no lone surrogates, 1-256 characters;
# the alphabet leans on the characters URLs treat specially.
any_id = st.text(
    alphabet=st.one_of(
        st.sampled_from("./\\%?#;:@&=+$,!~*'()[]{}|^`\"<> 2eEfF"),
        st.characters(blacklist_categories=("Cc", "Cs")),
    ),
    min_size=1,
    max_size=256,
)


@settings(max_examples=400, deadline=None)
@given(session_id=any_id)
def test_any_id_round_trips_through_every_route(session_id):
    for name, args in SESSION_ROUTES:
        url = reverse(name, args=[*args, session_id])
        assert whatwg_path_is_stable(url), url
        assert server_resolve(url).kwargs["session_id"] == session_id, url
    ws = f"/ws/session/{quote_segment(session_id)}/"
    assert whatwg_path_is_stable(ws)
    assert websocket_urlpatterns[1].pattern.match(unquote(ws).lstrip("/"))[2] == {
        "session_id": session_id
    }


@pytest.mark.parametrize("session_id", NASTY_IDS)
@pytest.mark.parametrize("name,args", SESSION_ROUTES)
def test_every_reversed_url_names_the_same_session(name, args, session_id):
    url = reverse(name, args=[*args, session_id])
    assert whatwg_path_is_stable(url), url
    match = server_resolve(url)
    assert match.kwargs["session_id"] == session_id, (url, match.kwargs)
    if args:
        assert match.kwargs["action"] == args[0]


@pytest.mark.parametrize("session_id", NASTY_IDS)
def test_websocket_url_names_the_same_session(session_id):
    url = f"/ws/session/{quote_segment(session_id)}/"
    assert whatwg_path_is_stable(url), url
    route = websocket_urlpatterns[1]
    match = route.pattern.match(unquote(url).lstrip("/"))
    assert match and match[2]["session_id"] == session_id


def test_the_old_scheme_was_the_hole():
    """Django's plain <path:> reversal leaves dot segments in place: what the issue saw."""
    from urllib.parse import quote

    from django.utils.http import RFC3986_SUBDELIMS

    old = "/act/close/" + quote(f"zz/../{VICTIM}", safe=RFC3986_SUBDELIMS + "/~:@") + "/"
    assert not whatwg_path_is_stable(old)


# -- rendered pages ---------------------------------------------------------------------------


class _Urls(HTMLParser):
    ATTRS = {"href", "action", "hx-get", "hx-post", "ws-connect", "src"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in self.ATTRS and v]


def rendered_urls(html: str) -> list[str]:
    parser = _Urls()
    parser.feed(html)
    return parser.urls


def session_of(url: str) -> str | None:
    """The session a same-site URL names, or None when it names none."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return None
    try:
        match = server_resolve(url)
    except Resolver404:
        if parts.path.startswith("/ws/session/"):
            hit = websocket_urlpatterns[1].pattern.match(unquote(parts.path).lstrip("/"))
            return hit[2]["session_id"] if hit else "<unresolved>"
        return None
    return match.kwargs.get("session_id")


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_user(
        "staffer", password="pw-staffer-123456", is_staff=True
    )
    user.groups.add(Group.objects.get(name="supervisors"))
    client.force_login(user)
    return client


@pytest.fixture
def seeded(redis_url, namespace):
    """The victim and every nasty id exist, each with state (the admin editor's rows)."""

    async def seed():
        for sid in [VICTIM, *NASTY_IDS]:
            coord = AgentCoordinator(sid, redis_url, namespace=namespace)
            await coord.publish(EventType.MESSAGE, {"text": f"hi from {sid}"})
            await coord.escalate("needs a human")
            await coord.set_state("plan", "A")

    async_to_sync(seed)()
    return redis_url, namespace


def test_every_url_on_every_page_names_the_session_it_is_for(staff_client, seeded, figures):
    checked = 0
    for sid in NASTY_IDS:
        for name in ("coordination:session", "coordination:timeline"):
            page = staff_client.get(reverse(name, args=[sid]))
            assert page.status_code == 200, (sid, name, page.status_code)
            urls = rendered_urls(page.content.decode())
            named = [u for u in urls if session_of(u) is not None]
            assert named, (sid, name)
            for url in named:
                assert whatwg_path_is_stable(urlsplit(url).path), (sid, url)
                assert session_of(url) == sid, (sid, url)
                checked += 1
        admin_page = staff_client.get(reverse("admin:coordination_session_state", args=[sid]))
        assert admin_page.status_code == 200, sid
    # the lists: every session link is stable, and a search for an id links to that id
    for sid in NASTY_IDS:
        for list_url in ("/sessions/", "/admin/coordination/sessions/"):
            page = staff_client.get(list_url, {"q": sid}).content.decode()
            named = [u for u in rendered_urls(page) if session_of(u) is not None]
            assert sid in {session_of(u) for u in named}, (list_url, sid)
            for url in named:
                assert whatwg_path_is_stable(urlsplit(url).path), url
            checked += len(named)
    overview = staff_client.get("/").content.decode()
    for url in rendered_urls(overview):
        if session_of(url) is not None:
            assert whatwg_path_is_stable(urlsplit(url).path), url
            checked += 1
    figures(
        "hostile session ids in URLs",
        f"{len(NASTY_IDS)} ids ('..', '/', '%2F', '?', '#', '\\\\', unicode); {checked} rendered URLs",
        "every URL named its own session, no dot segment in any spelling",
    )


@pytest.mark.parametrize("role", ["viewer", "supervisor", "superuser"])
def test_each_role_sees_only_urls_of_the_session_it_opened(client, django_user_model, seeded, role):
    user = django_user_model.objects.create_user(
        f"u-{role}", password="pw-role-123456", is_staff=role == "superuser"
    )
    user.is_superuser = role == "superuser"
    user.save()
    if role != "superuser":
        user.groups.add(
            Group.objects.get(name="supervisors" if role == "supervisor" else "viewers")
        )
    client.force_login(user)
    for sid in NASTY_IDS:
        page = client.get(reverse("coordination:session", args=[sid])).content.decode()
        named = [u for u in rendered_urls(page) if session_of(u) is not None]
        assert any("/ws/session/" in u for u in named), (role, sid)
        assert any("/act/" in u for u in named) == (role != "viewer"), (role, sid)
        for url in named:
            assert whatwg_path_is_stable(urlsplit(url).path), (role, sid, url)
            assert session_of(url) == sid, (role, sid, url)


def test_acting_through_a_dot_segment_id_touches_only_that_session(staff_client, seeded):
    attacker = f"zz/../{VICTIM}"
    redis_url, namespace = seeded

    def events(sid):
        return async_to_sync(AgentCoordinator(sid, redis_url, namespace=namespace).events)()

    before = len(events(VICTIM))
    page = staff_client.get(reverse("coordination:session", args=[attacker])).content.decode()
    actions = [u for u in rendered_urls(page) if "/act/" in u]
    assert {u.split("/")[2] for u in actions} >= {"take-over", "note", "close"}
    for url in dict.fromkeys(actions):
        response = staff_client.post(url, {"text": "x", "to_agent": ""}, HTTP_HX_REQUEST="true")
        assert response.status_code < 500, url
    # every action went to the attacker's session; the victim saw nothing
    assert len(events(VICTIM)) == before
    types = [e.type for e in events(attacker)]
    assert EventType.HUMAN_TAKEOVER in types and EventType.SESSION_CLOSED in types, types
    # the redirect after a plain (non-htmx) form post comes back to the same session
    close = reverse("coordination:act", args=["note", attacker])
    response = staff_client.post(close, {"text": "again"})
    assert response.status_code == 302
    assert session_of(response["Location"]) == attacker
    assert whatwg_path_is_stable(response["Location"])


def test_slash_appending_redirect_keeps_the_session(staff_client, seeded):
    for sid in (f"zz/../{VICTIM}", "..", "%41", "a?b#c"):
        url = reverse("coordination:session", args=[sid])
        response = staff_client.get(url.rstrip("/"))
        assert response.status_code == 301, (sid, response.status_code)
        assert response["Location"] == url
        assert session_of(response["Location"]) == sid


def test_admin_editor_saves_and_redirects_to_the_same_session(staff_client, seeded):
    redis_url, namespace = seeded
    for sid in (f"zz/../{VICTIM}", "..", "%41", "a?b#c"):
        url = reverse("admin:coordination_session_state", args=[sid])
        response = staff_client.post(url, {**EMPTY_STATE_FORM, "new-key": "k", "new-value": '"v"'})
        assert response.status_code == 302, (sid, response.status_code)
        assert session_of(response["Location"]) == sid
        state = async_to_sync(AgentCoordinator(sid, redis_url, namespace=namespace).get_all_state)
        assert state()["k"] == "v"
    victim = AgentCoordinator(VICTIM, redis_url, namespace=namespace)
    assert "k" not in async_to_sync(victim.get_all_state)()
    assert (
        "k"
        not in async_to_sync(AgentCoordinator("A", redis_url, namespace=namespace).get_all_state)()
    )


def test_sign_in_returns_to_the_same_session(client, django_user_model, seeded):
    django_user_model.objects.create_user("comeback", password="pw-comeback-123456")
    for sid in (f"zz/../{VICTIM}", "..", "%41"):
        target = reverse("coordination:session", args=[sid])
        to_login = client.get(target)
        assert to_login.status_code == 302 and "/login/" in to_login["Location"]
        next_url = dict(p.split("=", 1) for p in urlsplit(to_login["Location"]).query.split("&"))[
            "next"
        ]
        assert unquote(next_url) == target
        signed_in = client.post(
            to_login["Location"], {"username": "comeback", "password": "pw-comeback-123456"}
        )
        assert signed_in.status_code == 302, signed_in.status_code
        assert session_of(signed_in["Location"]) == sid, signed_in["Location"]
        client.logout()


def test_ids_that_cannot_exist_are_404_not_500(staff_client):
    for url in (
        "/sessions/%ED%A0%80/",  # a lone surrogate's UTF-8 bytes: never valid
        "/sessions/%00/",
        "/timeline/%0Abad/",
        "/sessions/" + "a" * 300 + "/",
        "/admin/coordination/sessions/%ED%A0%80/state/",
    ):
        response = staff_client.get(url)
        assert response.status_code == 404, (url, response.status_code)


# -- malformed input: 4xx, never 500 ------------------------------------------------------------

DEEP = "[" * 10_000 + "]" * 10_000
BAD_CURSORS = [
    "garbage",
    '[NaN, "x"]',
    "[Infinity]",
    "[1, 2, 3]",
    "{}",
    '"ab"',
    "1",
    '[[1], "x"]',
    "[" * 100_000,
    DEEP,
    '[1e999999, "x"]',
    '["' + "9" * 5000 + '", "x"]',
]
BAD_EVENT_IDS = [
    "garbage",
    "99999999999999999999999-0",
    "1-99999999999999999999999",
    "18446744073709551616-0",
    "\u0661\u0662\u0663",  # Arabic-Indic digits: \d matches them, Redis does not
    "1\n",
    "1-",
    "-1",
    "+",
    "1-2-3",
    "9" * 5000,
]


@pytest.fixture
def one_session(redis_url, namespace):
    coord = AgentCoordinator("s-1", redis_url, namespace=namespace)
    async_to_sync(coord.publish)(EventType.MESSAGE, {"text": "hi"})
    return coord


def test_malformed_page_queries_answer_400_with_a_reason(client, supervisor, one_session):  # noqa: F811
    client.force_login(supervisor)
    client.raise_request_exception = False
    for cursor in BAD_CURSORS:
        response = client.get("/sessions/", {"cursor": cursor})
        assert response.status_code == 400, (cursor[:40], response.status_code)
        assert b"cursor" in response.content
    for before in BAD_EVENT_IDS:
        response = client.get("/timeline/s-1/", {"before": before})
        assert response.status_code == 400, (before[:40], response.status_code)
        assert b"before" in response.content
    # the edges of the valid range read nothing, without an error
    assert client.get("/timeline/s-1/", {"before": "0-0"}).status_code == 200
    assert client.get("/timeline/s-1/", {"before": "0"}).status_code == 200


@pytest.mark.django_db(transaction=True)
async def test_malformed_api_queries_answer_4xx_with_a_reason(supervisor, one_session):  # noqa: F811
    token = (await sync_to_async(ApiToken.issue)(supervisor, "t"))[1]
    client = AsyncClient(raise_request_exception=False)
    headers = {"Authorization": f"Bearer {token}"}

    async def get(url, data):
        return await client.get(url, data, headers=headers)

    tried = 0
    for cursor in BAD_CURSORS:
        response = await get("/api/v1/sessions/", {"cursor": cursor})
        tried += 1
        assert 400 <= response.status_code < 500, (cursor[:40], response.status_code)
        assert "detail" in response.json()
    for after in BAD_EVENT_IDS:
        response = await get("/api/v1/events/s-1", {"after": after})
        tried += 1
        assert 400 <= response.status_code < 500, (after[:40], response.status_code)
        assert "detail" in response.json()
    for limit in ("abc", "0", "-1", "1e3", "9" * 40):
        for url in ("/api/v1/sessions/", "/api/v1/events/s-1", "/api/v1/escalations/"):
            response = await get(url, {"limit": limit})
            tried += 1
            assert 400 <= response.status_code < 500, (url, limit, response.status_code)
    ok = await get("/api/v1/events/s-1", {"after": "18446744073709551615-18446744073709551615"})
    assert ok.status_code == 200 and ok.json()["items"] == []
    for sid in ("%ED%A0%80", "%00", "a" * 300):
        for url in (f"/api/v1/sessions/{sid}", f"/api/v1/events/{sid}"):
            response = await get(url, {})
            assert response.status_code in (400, 404), (url, response.status_code)
    # a lone surrogate arrives through a JSON body, refused per session, not a 500
    response = await client.post(
        "/api/v1/bulk/close",
        '{"session_ids": ["\\ud800", "s-1\\u0000"]}',
        content_type="application/json",
        headers=headers,
    )
    assert response.status_code < 500, response.status_code
    assert tried > 30


@pytest.mark.django_db(transaction=True)
def test_websocket_frames_that_are_not_json_objects_get_an_error_frame(supervisor, one_session):  # noqa: F811
    frames = ["not json", "[1, 2]", "5", "null", '"resume"', "{", DEEP, "x" * 100_000, "\ud800"]

    async def scenario():
        for ws_path in ("/ws/session/s-1/", "/ws/sessions/?view=overview"):
            socket = WebsocketCommunicator(URLRouter(websocket_urlpatterns), ws_path)
            socket.scope["user"] = supervisor
            connected, _ = await socket.connect()
            assert connected
            try:
                for frame in frames:
                    await socket.send_to(text_data=frame)
                    reply = json.loads(await socket.receive_from(timeout=10))
                    assert "error" in reply, (frame[:20], reply)
                await socket.send_to(bytes_data=b"\x00\xff")
                assert "error" in json.loads(await socket.receive_from(timeout=10))
                # still serving: a proper resume is answered
                await socket.send_to(text_data=json.dumps({"resume": "0"}))
                answer = await socket.receive_from(timeout=10)
                assert "error" not in answer[:20]
            finally:
                await socket.disconnect()

    async_to_sync(scenario)()


@pytest.mark.django_db(transaction=True)
def test_websocket_query_strings_that_are_not_utf8_are_accepted_as_garbage(supervisor):  # noqa: F811
    async def scenario():
        for query in (
            b"view=list&status=\xff\xfe",
            b"view=list&q=%ff",
            b"view=list&owner=" + b"a" * 5000,
        ):
            socket = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/sessions/")
            socket.scope["query_string"] = query
            socket.scope["user"] = supervisor
            connected, _ = await socket.connect()
            assert connected, query[:30]
            await socket.disconnect()

    async_to_sync(scenario)()


# -- the admin state editor -----------------------------------------------------------------------


@pytest.fixture
def editor(staff_client, redis_url, namespace):
    coord = AgentCoordinator("s-edit", redis_url, namespace=namespace)
    async_to_sync(coord.update_state)({"plan": "A"})
    url = reverse("admin:coordination_session_state", args=["s-edit"])
    return staff_client, coord, url


def _versions(coord):
    return async_to_sync(coord.get_state_versions)()


# The editor is a formset (prefix "state") and a "new" form; these are its fields as the page
# renders them.
EMPTY_STATE_FORM = {"state-TOTAL_FORMS": "0", "state-INITIAL_FORMS": "0"}


def _row(key: str, version: int, original: str) -> dict[str, str]:
    return {
        "state-TOTAL_FORMS": "1",
        "state-INITIAL_FORMS": "1",
        "state-0-key": json.dumps(key),
        "state-0-version": str(version),
        "state-0-original": original,
    }


@pytest.mark.parametrize(
    "text",
    [
        DEEP,
        "[" * 150 + "]" * 150,  # parses, but deeper than the core stores
        "hello",
        "NaN",
        "-Infinity",
        "9" * 5000,
        '"' + "x" * 1_100_000 + '"',  # over the core's 1 MB value limit, under Django's body limit
        '{"a": 1',
        "",
    ],
    ids=["deep", "too-deep", "bare-word", "nan", "inf", "long-int", "huge", "unclosed", "empty"],
)
def test_state_editor_refuses_bad_json_with_a_form_error_and_loses_nothing(editor, text):
    client, coord, url = editor
    before = _versions(coord)
    for field in ("state-0-value", "new-value"):
        data = {**_row("plan", 1, '"A"'), "state-0-value": '"A"'}
        if field == "state-0-value":
            data["state-0-value"] = text
        else:
            data["new-key"], data["new-value"] = "fresh", text
        response = client.post(url, data)
        assert response.status_code == 400, (field, response.status_code)
        body = response.content.decode()
        assert 'class="errorlist"' in body
        assert re.search(r"Not valid JSON|Not accepted", body), body[:2000]
        if len(text) < 200_000:  # what was typed is still in the form (escaped)
            assert text.replace('"', "&quot;")[:1000] in body
        assert _versions(coord) == before


def test_state_editor_refuses_a_damaged_form(editor):
    client, coord, url = editor
    before = _versions(coord)
    good = {**_row("plan", 1, '"A"'), "state-0-value": '"B"'}
    for damage in (
        {**good, "state-TOTAL_FORMS": "x"},
        {**good, "state-TOTAL_FORMS": "-1"},
        {**good, "state-TOTAL_FORMS": "1000000000"},
        {k: v for k, v in good.items() if "_FORMS" not in k},
        {**good, "state-0-version": "x"},
        {**good, "state-0-version": "-1"},
        {**good, "state-0-key": "plan"},  # the key travels as JSON
        {**good, "state-0-original": "[[["},
        {**good, "state-0-original": DEEP, "state-0-delete": "on"},
    ):
        response = client.post(url, damage)
        assert response.status_code == 400, (damage, response.status_code)
        assert re.search(
            "The form was damaged|ManagementForm data is missing|Please submit at most",
            response.content.decode(),
        ), damage
    assert _versions(coord) == before


def test_state_editor_body_over_djangos_limit_is_400_not_500(editor, settings):
    client, coord, url = editor
    client.raise_request_exception = False
    before = _versions(coord)
    response = client.post(url, {**EMPTY_STATE_FORM, "new-key": "k", "new-value": "x" * 3_000_000})
    assert response.status_code == 400
    assert _versions(coord) == before


# -- no secret on any page, DEBUG included --------------------------------------------------------

PASSWORD = "S3cr3t-pw-" + "q" * 8
SECRET_URL = f"redis://agent:{PASSWORD}@redis.internal:6380/0"


def _boom(request):
    redis_url = SECRET_URL  # noqa: F841  (a local the debug page lists)
    connection_string = f"rediss://:{PASSWORD}@cache.internal:6379/1?password={PASSWORD}"  # noqa: F841
    options = {"password": PASSWORD, "host": "redis.internal"}  # noqa: F841
    raise RuntimeError(f"could not reach {SECRET_URL}")


urlpatterns = [path("boom/", _boom), path("", include("coordinator_site.urls"))]


@pytest.fixture
def secret_settings(settings):
    settings.DEBUG = True
    settings.REDIS_URL = SECRET_URL
    settings.DATABASE_URL = f"postgres://app:{PASSWORD}@db.internal/app"
    settings.METRICS_TOKEN = PASSWORD
    caches, layers = redis_services(SECRET_URL, "ns")
    sentinel_caches, sentinel_layers = redis_services(
        f"redis+sentinel://:{PASSWORD}@s1:26379,s2:26379/mymaster/0", "ns"
    )
    settings.CACHES = caches
    settings.CHANNEL_LAYERS = {**layers, "sentinel": sentinel_layers["default"]}
    settings.EXTRA_URLS = [f"amqp://u:{PASSWORD}@mq/"]
    assert PASSWORD in json.dumps(settings.CHANNEL_LAYERS)  # the layer's settings hold it
    return settings


def test_debug_500_is_our_page_and_the_log_has_the_traceback_without_password(
    client,
    supervisor,  # noqa: F811
    secret_settings,
    caplog,
):
    from coordination.foundation.json_logs import JsonFormatter, RedactSecrets

    secret_settings.ROOT_URLCONF = __name__
    client.force_login(supervisor)
    client.raise_request_exception = False
    with caplog.at_level(logging.ERROR):
        for accept in ("text/html", "text/plain"):
            response = client.get("/boom/", HTTP_ACCEPT=accept)
            assert response.status_code == 500
            body = response.content.decode()
            # DEBUG or not, the site's own 500 page: no traceback, no settings, no password
            assert '<h1 id="error-title">Something went wrong</h1>' in body, accept
            assert "RuntimeError" not in body and "REDIS_URL" not in body, accept
            assert PASSWORD not in body, accept
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, [r.getMessage() for r in errors]  # once a request, not twice
    for record in errors:
        assert RedactSecrets().filter(record)
        line = JsonFormatter().format(record)
        assert "RuntimeError: could not reach" in line  # the developer's traceback
        assert PASSWORD not in line


def test_debug_technical_500_with_a_password_in_a_local_variable():
    request = RequestFactory().get("/x/", HTTP_ACCEPT="text/html")
    try:
        _boom(request)
    except RuntimeError:
        response = technical_500_response(request, *sys.exc_info())
    body = response.content.decode()
    assert "connection_string" in body and PASSWORD not in body


def test_debug_400_and_503_pages_show_no_password(client, supervisor, secret_settings):  # noqa: F811
    client.force_login(supervisor)
    client.raise_request_exception = False
    too_big = client.post("/act-bulk/", {"x": "y" * 3_000_000})
    assert too_big.status_code == 400
    assert "DATA_UPLOAD_MAX_MEMORY_SIZE" in too_big.content.decode()  # the debug page
    assert PASSWORD not in too_big.content.decode()
    unreachable = client.get("/sessions/nope/")  # REDIS_URL names a host that does not exist
    assert unreachable.status_code == 503
    assert "redis.internal" in unreachable.content.decode()
    assert PASSWORD not in unreachable.content.decode()


def test_debug_404_page_lists_routes_not_settings(client, supervisor, settings):  # noqa: F811
    settings.DEBUG = True
    client.force_login(supervisor)
    missing = client.get("/sessions/nope/").content.decode()
    assert "nope" in missing and "REDIS_URL" not in missing and "CHANNEL_LAYERS" not in missing


def test_mask_secrets():
    assert mask_secrets(f"x {SECRET_URL} y") == "x redis://***@redis.internal:6380/0 y"
    assert PASSWORD not in mask_secrets(f"redis://:{PASSWORD}@h/0?password={PASSWORD}&db=1")
    assert PASSWORD not in mask_secrets(f"redis://:p@{PASSWORD}@h/0")
    assert mask_secrets("redis://h:6379/0 and user@example.com") == (
        "redis://h:6379/0 and user@example.com"
    )
