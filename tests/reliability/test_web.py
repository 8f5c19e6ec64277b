"""Every route and form, enumerated from the URL conf and the websocket routing, so new routes
are covered automatically: login required, viewers refused, hostile input never a 5xx."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.urls import URLPattern, URLResolver, get_resolver

from coordination import AgentCoordinator, EventType
from coordination.realtime.routing import websocket_urlpatterns

from ..web.conftest import coordination_settings, supervisor, viewer  # noqa: F401

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
# logout: POST-only, harmless anonymously; index: /api/v1/, a discovery document (title, version,
# where the docs and the schema are), public like any API root
# team_set_password: an invited person's one-time link (they have no login yet; the token is
# the check, tested in tests/web/test_team.py)
PUBLIC = {"login", "healthz", "logout", "favicon", "index", "api-root", "team_set_password"}
HOSTILE_IDS = [
    "nope",
    "{x}:y:z",
    "<script>alert(1)</script>",
    "a" * 300,
    "%00",
    "%0Abad",
    "..%2F..%2Fetc",
    "\u202eevil",
    "ünïcödé",
    "x/y/z",
    "%25",
    " ",
    "'; DROP TABLE x; --",
    "s-1",
]
SLUGS = [
    "take-over",
    "hand-back",
    "release",
    "reassign",
    "reply",
    "note",
    "close",
    "explode",
    "%00",
]

REAL_ACTIONS = SLUGS[: SLUGS.index("explode")]


def walk(patterns=None, prefix="", names=()):
    """(route, url name) for every URL pattern."""
    for p in patterns if patterns is not None else get_resolver().url_patterns:
        if isinstance(p, URLResolver):
            yield from walk(p.url_patterns, prefix + str(p.pattern), names + ((p.namespace or ""),))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern), p.name or ""


def sample_urls(route: str, ids=("s-1",), slugs=SLUGS) -> list[str]:
    if route.startswith("^") or "(?P" in route:  # the admin's regex routes
        route = re.sub(r"\(\?P<(\w+)>[^)]*\)", "1", route).strip("^$").replace("\\", "")
    urls = []
    for session_id in ids:
        for slug in slugs if "<slug:" in route else ["x"]:
            url = re.sub(r"<(?:path|sid):\w+>", session_id, route)
            url = re.sub(r"<slug:\w+>", slug, url)
            url = re.sub(r"<int:\w+>", "1", url)
            url = re.sub(r"<\w+:\w+>|<\w+>", "x", url)
            urls.append("/" + url)
    return sorted(set(urls))


def test_every_route_requires_login(client, coordination_settings, supervisor, figures):  # noqa: F811
    # Every id in the walk exists (a session with events, state and a pending approval, a saved
    # filter, a user): a 404 for a missing object would hide a missing login check.
    from coordination.models import SavedFilter

    async def existing_session():
        coord = AgentCoordinator(
            "s-1",
            coordination_settings.REDIS_URL,
            namespace=coordination_settings.COORDINATION_NAMESPACE,
        )
        await coord.publish(EventType.MESSAGE, {"text": "hello"})
        await coord.set_state("k", 1)
        return await coord.request_approval("refund", {"amount": 1}, agent_id="a")

    approval = async_to_sync(existing_session)()
    saved = SavedFilter.objects.create(user=supervisor, name="mine", query="status=active")
    tried = 0
    answered = collections.Counter()
    for route, name in walk():
        if name in PUBLIC:
            continue
        if not name and route.startswith("api/"):
            continue  # the API's catch-all: a JSON 404 for paths that are no endpoint
        route = route.replace("<int:pk>", str(saved.pk)).replace("<action>", "take-over")
        route = route.replace("<approval_id>", approval.approval_id)
        for url in sample_urls(route, slugs=REAL_ACTIONS):
            for method in ("get", "post"):
                response = getattr(client, method)(url)
                tried += 1
                answered[response.status_code] += 1
                # pages send anonymous users to a login page; the JSON API takes bearer tokens,
                # not the login, and answers 401 itself (405 for a method it does not offer);
                # /metrics takes a staff login or its bearer token and answers 403 otherwise
                if url.startswith("/api/"):
                    allowed = (401, 405)
                elif url == "/metrics":
                    allowed = (403, 405)
                else:
                    allowed = (302,)
                assert response.status_code in allowed, (method, url, response.status_code)
                if response.status_code == 302:
                    assert "/login/" in response["Location"], (url, response["Location"])
    figures(
        "anonymous access",
        f"{tried} requests to every route of the URL conf",
        "0 answered with content; all redirected to login or refused: "
        + ", ".join(f"{n}x {code}" for code, n in sorted(answered.items())),
    )
    assert tried > 20


async def test_every_websocket_route_refuses_anonymous_users(figures):
    from django.contrib.auth.models import AnonymousUser

    app = URLRouter(websocket_urlpatterns)
    refused = 0
    for pattern in websocket_urlpatterns:
        path = "/" + re.sub(r"<\w+:\w+>", "s-1", str(pattern.pattern))
        communicator = WebsocketCommunicator(app, path)
        communicator.scope["user"] = AnonymousUser()
        connected, code = await communicator.connect()
        assert not connected and code == 4401, (path, connected, code)
        refused += 1
        await communicator.disconnect()
    figures(
        "anonymous websockets",
        f"{refused} websocket routes",
        f"{refused} refused (close code 4401)",
    )
    assert AuthMiddlewareStack  # the ASGI app wraps these routes in it (coordinator_site/asgi.py)


def test_hostile_input_never_gives_a_server_error(client, supervisor, django_user_model, figures):  # noqa: F811
    staff = django_user_model.objects.create_user(
        "staff", password="pw-staff-123456", is_staff=True
    )
    staff.groups.add(Group.objects.get(name="supervisors"))
    forms = [
        {},
        {"text": "x" * 5000},
        {"text": "\x00"},
        {"to_agent": "{bad}\n"},
        {"expected_owner": "<b>"},
        # the admin's state editor (coordination/admin.py): a formset and a "new" form
        {
            "state-TOTAL_FORMS": "2",
            "state-0-key": "k",
            "state-0-value": "{not",
            "state-0-version": "x",
        },
        {"state-TOTAL_FORMS": "-1", "state-INITIAL_FORMS": "0"},
        {"new-key": "k", "new-value": "NaN"},
        {"cursor": "[[[["},
    ]
    queries = [
        "",
        "?cursor=garbage",
        "?status=bogus",
        "?before=zzz",
        "?q=%00",
        "?agent=" + "a" * 400,
    ]
    tried = errors = 0
    for user in (supervisor, staff):
        client.force_login(user)
        for route, name in walk():
            if name == "logout":
                continue
            for url in sample_urls(route, HOSTILE_IDS):
                for query in queries:
                    response = client.get(url + query)
                    tried += 1
                    errors += response.status_code >= 500
                for form in forms:
                    response = client.post(url, form, HTTP_HX_REQUEST="true")
                    tried += 1
                    errors += response.status_code >= 500
    figures(
        "hostile input on every URL and form",
        f"{tried} requests (malformed ids, unknown sessions, bad cursors, invalid JSON, forged actions)",
        f"{errors} server errors",
    )
    assert errors == 0


def test_viewers_are_refused_every_action(client, viewer, figures):  # noqa: F811
    client.force_login(viewer)
    action_routes = [r for r, n in walk() if n in ("act", "claim_next")]
    tried = 0
    for route in action_routes:
        for url in sample_urls(route):
            if "explode" in url or "%00" in url:
                continue
            response = client.post(url, {"text": "x", "to_agent": "a"})
            tried += 1
            # a browser login is not an API credential: 401 there, 403 on the pages
            assert response.status_code == (401 if url.startswith("/api/") else 403), url
    figures("viewers acting", f"{tried} forged POSTs to every action", f"{tried} refused with 403")


def test_pages_carry_no_inline_script(client, supervisor):  # noqa: F811
    client.force_login(supervisor)
    for url in ["/", "/sessions/", "/agents/", "/login/"]:
        body = client.get(url).content.decode()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", body), url
        assert not re.search(r"\son[a-z]+\s*=", body), url
        assert "'unsafe-inline'" not in client.get(url)["Content-Security-Policy"]


def test_production_settings_pass_check_deploy(tmp_path):
    env = {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": "x" * 20 + "production-secret-key-for-the-check-only-0123456789",
        "ALLOWED_HOSTS": "coordinator.example.com",
        "COORDINATION_VAR_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    env = {**os.environ, "DEBUG": "false", "COORDINATION_VAR_DIR": str(tmp_path)}
    env.pop("SECRET_KEY", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr


def test_login_is_throttled(client, supervisor, figures):  # noqa: F811
    for _ in range(5):
        assert client.post("/login/", {"username": "sup", "password": "wrong"}).status_code == 200
    blocked = client.post("/login/", {"username": "sup", "password": "pw-sup-123456"})
    assert blocked.status_code == 429 and "Too many failed sign-ins" in blocked.content.decode()
    other = client.post("/login/", {"username": "someone-else", "password": "x"})
    assert other.status_code == 200  # the throttle is per user and address
    figures(
        "login brute force",
        "6 sign-ins with 5 wrong passwords",
        "the 6th (even correct) refused with 429",
    )
