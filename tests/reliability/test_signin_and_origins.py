"""Sign-in throttle, forwarded headers, websocket origins and credentials in logs, attacked the
way an agent on the same machine (or anyone with a browser) would: rotating X-Forwarded-For,
look-alike usernames, the admin's own login form, handshakes from a neighbouring port or
scheme, and tokens sent in every wrong shape to see whether any of it reaches a log line."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import logging
import re
import uuid
from http.cookies import SimpleCookie

import pytest
import websockets
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group, Permission, User
from django.test import Client

from coordination.devtools.processes import AsgiServer
from coordination.foundation.auth import (
    FAILURES_PER_ADDRESS,
    FAILURES_PER_USER,
    FAILURES_PER_USERNAME,
)
from coordination.foundation.json_logs import RedactSecrets
from coordination.foundation.origin import SameOriginValidator
from coordination.models import ApiToken, AuditEntry

from ..browser.conftest import (  # noqa: F401  (live_database: server_env needs it)
    PASSWORD,
    create_users,
    in_plain_thread,
    live_database,
)
from ..conftest import delete_namespace, redis_url_of_kind
from ..web.conftest import coordination_settings  # noqa: F401


@pytest.fixture
def redis_url(request):
    """Single server unless a test asks for ``cluster`` (the throttle's keys span slots)."""
    request.param = getattr(request, "param", "single")
    return redis_url_of_kind(request)


FAST_HASHER = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # in-process tests only
RIGHT = "pw-right-123456"


# -- in-process: the throttle's counting -------------------------------------------------------


@pytest.fixture
def user(db, settings):
    """A supervisor with a fast password hash (the throttle, not PBKDF2, is under test)."""
    settings.PASSWORD_HASHERS = FAST_HASHER
    created = User.objects.create_user("sup", password=RIGHT, is_staff=True)
    group, _ = Group.objects.get_or_create(name="supervisors")
    group.permissions.add(Permission.objects.get(codename="intervene"))
    created.groups.add(group)
    return created


def sign_in(
    client: Client, username: str, password: str, address: str = "127.0.0.1", path="/login/"
):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def test_look_alike_usernames_reach_the_user_and_share_one_count(user, figures):
    client = Client()
    # the attack's premise: Django's form normalizes NFKC, so fullwidth letters sign in as "sup"
    assert sign_in(client, "ｓｕｐ", RIGHT).status_code == 302
    client.logout()
    variants = ["ｓｕｐ", "𝐬𝐮𝐩", "SUP", " sup ", "Ｓup"]
    assert len(variants) == FAILURES_PER_USER
    for name in variants:
        assert sign_in(client, name, "wrong").status_code == 200
    blocked = sign_in(client, "sup", RIGHT)
    assert blocked.status_code == 429 and "Too many failed sign-ins" in blocked.content.decode()
    assert "_auth_user_id" not in client.session
    figures(
        "look-alike usernames",
        "5 wrong passwords as ｓｕｐ, 𝐬𝐮𝐩, SUP, ' sup ', Ｓup",
        "the right password for sup then refused with 429",
    )


@pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)
def test_one_username_is_limited_across_addresses(user, redis_url, figures):
    client = Client()
    for n in range(FAILURES_PER_USERNAME - 1):
        assert sign_in(client, "sup", "wrong", f"203.0.113.{n + 1}").status_code == 200
    assert sign_in(client, "sup", RIGHT, "203.0.113.200").status_code == 302  # 19: not yet
    client.logout()
    assert sign_in(client, "sup", "wrong", "203.0.113.201").status_code == 200  # the 20th
    assert sign_in(client, "sup", RIGHT, "192.0.2.77").status_code == 429  # a fresh address
    # only that account is paused: another one signs in from the same fresh address
    User.objects.create_user("other", password=RIGHT)
    assert sign_in(client, "other", RIGHT, "192.0.2.77").status_code == 302
    figures(
        "one account from many addresses",
        f"{FAILURES_PER_USERNAME} wrong passwords for one user, each from another address",
        "the right password then refused from any address (429); other accounts unaffected",
    )


def test_a_lock_is_logged_once_without_the_typed_username_or_password(user, caplog):
    client = Client()
    caplog.set_level(logging.INFO, logger="coordination.foundation.auth")
    for _ in range(FAILURES_PER_USER + 3):
        sign_in(client, "ＳＵＰ", "hunter2-guess", "192.0.2.99")
    locks = [r for r in caplog.records if r.name == "coordination.foundation.auth"]
    assert len(locks) == 1 and "username and address" in locks[0].getMessage()
    assert locks[0].client_address == "192.0.2.99" and locks[0].action == "sign-in-throttled"
    text = _haystack(locks[0])
    assert "ＳＵＰ" not in text and not re.search(r"\bsup\b", text, re.IGNORECASE)
    assert "hunter2" not in text


def test_ipv6_addresses_are_counted_per_64(user):
    client = Client()
    for n in range(FAILURES_PER_USER):
        assert sign_in(client, "sup", "wrong", f"2001:db8:0:7::{n + 1:x}").status_code == 200
    assert sign_in(client, "sup", RIGHT, "2001:db8:0:7::ffff").status_code == 429
    assert sign_in(client, "sup", RIGHT, "2001:db8:0:8::1").status_code == 302


def test_one_address_is_limited_across_usernames(user, figures):
    client = Client()
    for n in range(FAILURES_PER_ADDRESS):
        assert sign_in(client, f"nobody-{n}", "wrong", "198.51.100.50").status_code == 200
    assert sign_in(client, "sup", RIGHT, "198.51.100.50").status_code == 429
    assert sign_in(client, "sup", RIGHT, "198.51.100.51").status_code == 302
    figures(
        "one address, many usernames",
        f"{FAILURES_PER_ADDRESS} failed sign-ins with different usernames from one address",
        "every further sign-in from it refused (429); other addresses unaffected",
    )


def test_admin_login_is_throttled_with_the_same_counts(user, figures):
    client = Client()
    for _ in range(3):
        assert sign_in(client, "sup", "wrong", path="/login/").status_code == 200
    for _ in range(2):
        response = sign_in(client, "sup", "wrong", path="/admin/login/")
        assert response.status_code == 200 and "correct username and password" in (
            response.content.decode()
        )
    for path in ("/admin/login/", "/login/"):
        blocked = sign_in(client, "sup", RIGHT, path=path)
        assert blocked.status_code == 429, path
    assert "_auth_user_id" not in client.session
    # before the lock, the admin form does sign in: the throttle wraps it, nothing else changed
    fresh = Client()
    assert sign_in(fresh, "sup", RIGHT, "192.0.2.5", path="/admin/login/").status_code == 302
    figures(
        "/admin/login/ brute force",
        "3 wrong passwords on /login/ then 2 on /admin/login/",
        "both forms refuse the right password with 429 (one count)",
    )


def test_a_signed_in_user_guessing_another_account_is_counted(user):
    viewer = User.objects.create_user("watcher", password=RIGHT)
    client = Client()
    client.force_login(viewer)
    for n in range(FAILURES_PER_USER):
        path = "/admin/login/" if n % 2 else "/login/"
        assert sign_in(client, "sup", "wrong", path=path).status_code == 200
    assert sign_in(client, "sup", RIGHT, path="/admin/login/").status_code == 429


def _lockout_text(response) -> str:
    body = response.content.decode()
    body = re.sub(r'(csrf[^"]*"\s*(?:value|content)=")[^"]+', r"\1", body)
    return re.search(r'<section class="login-card" role="alert">.*?</section>', body, re.S)[0]


def test_lockout_is_the_same_for_existing_and_unknown_users(user):
    answers = []
    for name, address in (("sup", "192.0.2.10"), ("no-such-user", "192.0.2.11")):
        client = Client()
        for _ in range(FAILURES_PER_USER):
            assert sign_in(client, name, "wrong", address).status_code == 200
        answers.append(sign_in(client, name, RIGHT, address))
    known, unknown = answers
    assert known.status_code == unknown.status_code == 429
    assert known["Retry-After"] == unknown["Retry-After"] == "900"
    assert _lockout_text(known) == _lockout_text(unknown)
    assert "15 minutes" in _lockout_text(known) and "no-such-user" not in _lockout_text(unknown)


# -- in-process: credentials never logged ------------------------------------------------------


def _haystack(record: logging.LogRecord) -> str:
    """Everything a handler could write from the record: message, arguments, traceback and
    every extra attribute."""
    parts = [record.getMessage(), repr(record.args), str(record.msg), record.exc_text or ""]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    parts += [repr(value) for value in vars(record).values()]
    return "\n".join(parts)


def test_tokens_never_reach_the_logs(user, settings, caplog, monkeypatch, figures):
    settings.DEBUG = True  # ninja logged a wrong-scheme header only in DEBUG, `make run`'s mode
    settings.METRICS_TOKEN = "metrics-" + uuid.uuid4().hex
    good = ApiToken.issue(user, "good")[1]
    revoked_row, revoked = ApiToken.issue(user, "revoked")
    revoked_row.delete()
    browser = Client()
    browser.force_login(User.objects.create_user("viewer-x", password=RIGHT))
    session_key = browser.cookies["sessionid"].value
    browser.get("/login/")  # sets the CSRF cookie
    csrf = browser.cookies["csrftoken"].value
    secrets = [good, revoked, settings.METRICS_TOKEN, session_key, csrf]

    def shapes(token: str) -> list[str]:
        basic = base64.b64encode(f"sup:{token}".encode()).decode()
        return [
            f"Token {token}",
            token,
            f"Bearer{token}",
            f"bearer  {token}",
            f"Bearer {token} trailing",
            f"Basic {basic}",
            f"Bearer {token}" + "x" * 300,
            f"Bearer {token}\xe9",
            f"Bearer {token}",
        ]

    # the console handler's mask off: this test is about what is logged, not what is printed
    for handler in logging.getLogger().handlers:
        monkeypatch.setattr(handler, "filters", [])
    caplog.set_level(logging.DEBUG)
    sent = 0
    statuses = set()
    for token in (good, revoked, settings.METRICS_TOKEN):
        for header in shapes(token):
            for method, path in (
                ("get", "/api/v1/sessions/"),
                ("post", "/api/v1/interventions/note/s-1"),
                ("get", "/api/v1/openapi.json"),
                ("get", "/metrics"),
            ):
                client = Client(HTTP_COOKIE=f"sessionid={session_key}; csrftoken={csrf}")
                kwargs = {"HTTP_AUTHORIZATION": header, "HTTP_X_CSRFTOKEN": csrf}
                if method == "post":
                    response = client.post(
                        path, {"text": "x"}, content_type="application/json", **kwargs
                    )
                else:
                    response = client.get(path, **kwargs)
                statuses.add(response.status_code)
                sent += 1
    assert statuses <= {200, 400, 401, 403, 404, 409, 422}, statuses  # never a 5xx
    assert caplog.records, "nothing was logged: the test would prove nothing"
    for record in caplog.records:
        text = _haystack(record)
        for secret in secrets:
            assert secret not in text, (record.name, record.getMessage())
    figures(
        "credentials in logs",
        f"{sent} requests to /api/v1/ and /metrics with valid, revoked and metrics tokens in "
        "9 shapes (wrong scheme, none, malformed, oversized, non-ASCII), session and CSRF cookies",
        f"{len(caplog.records)} log records, none holding a token or cookie value; no 5xx",
    )


def test_the_console_handler_masks_credentials_whoever_logs_them(settings):
    settings.METRICS_TOKEN = "metrics-" + uuid.uuid4().hex
    token = "coord_" + uuid.uuid4().hex
    handlers = [h for h in logging.getLogger().handlers if h.get_name() == "console"]
    assert handlers and any(isinstance(f, RedactSecrets) for f in handlers[0].filters)
    console, out = handlers[0], io.StringIO()
    previous = console.setStream(out)  # the configured handler, its filter and formatter
    try:
        log = logging.getLogger("some.library")
        log.error("Unexpected auth - 'Token %s'", token)
        log.error("headers: Authorization: Bearer %s; Cookie: sessionid=abc123def4", "plainsecret1")
        log.error("scrape with %s", settings.METRICS_TOKEN)
        try:
            raise ValueError(f"bad token {token}")
        except ValueError:
            log.exception("failed with csrftoken=Zz9Yy8Xx7Ww6")
    finally:
        console.setStream(previous)
    written = out.getvalue()
    assert written.count("\n") == 4
    for secret in (token, "plainsecret1", "abc123def4", settings.METRICS_TOKEN, "Zz9Yy8Xx7Ww6"):
        assert secret not in written
    assert written.count("***") >= 5


# -- the websocket origin check, in-process ----------------------------------------------------


@pytest.fixture
def hosts(settings, db):
    # db: a refused handshake goes to Channels' WebsocketDenier, a consumer, which closes
    # stale database connections on the way (blocked without the database fixture)
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
    settings.CSRF_TRUSTED_ORIGINS = []
    return settings


async def _accepting_app(scope, receive, send):
    await receive()
    await send({"type": "websocket.accept"})


async def handshake(headers: list[tuple[bytes, bytes]], scheme: str = "ws") -> bool:
    communicator = WebsocketCommunicator(SameOriginValidator(_accepting_app), "/ws/sessions/")
    communicator.scope["headers"] = headers
    communicator.scope["scheme"] = scheme
    connected, _ = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return connected


@pytest.mark.parametrize(
    ("scheme", "host", "origin", "accepted"),
    [
        ("ws", "127.0.0.1:8000", "http://127.0.0.1:8000", True),
        ("ws", "localhost:8000", "http://LOCALHOST:8000", True),
        ("wss", "localhost", "https://localhost", True),
        ("wss", "localhost", "https://localhost:443", True),
        ("ws", "[::1]:8000", "http://[::1]:8000", True),
        ("ws", "127.0.0.1:8000", "https://127.0.0.1:8000", False),
        ("wss", "127.0.0.1:8000", "http://127.0.0.1:8000", False),
        ("ws", "127.0.0.1:8000", "http://127.0.0.1:9999", False),
        ("ws", "127.0.0.1:8000", "http://127.0.0.1", False),
        ("ws", "127.0.0.1:8000", "http://localhost:8000", False),
        ("ws", "127.0.0.1:8000", "http://evil.example", False),
        ("ws", "127.0.0.1:8000", "null", False),
        ("ws", "127.0.0.1:8000", "", False),
        ("ws", "127.0.0.1:8000", "http://127.0.0.1:8000/page", False),
        ("ws", "127.0.0.1:8000", "http://user@127.0.0.1:8000", False),
        ("ws", "127.0.0.1:8000", "http://127.0.0.1:99999", False),
        ("ws", "127.0.0.1:8000", "file://", False),
        # DNS rebinding: the attacker's name pointed at this server, Host and Origin agree
        ("ws", "evil.example:8000", "http://evil.example:8000", False),
        ("ws", "127.0.0.1:abc", "http://127.0.0.1:abc", False),
    ],
)
async def test_origin_must_match_scheme_host_and_port(hosts, scheme, host, origin, accepted):
    headers = [(b"host", host.encode())]
    if origin:
        headers.append((b"origin", origin.encode()))
    assert await handshake(headers, scheme) is accepted


async def test_missing_or_doubled_origin_and_host_are_refused(hosts):
    assert not await handshake([(b"host", b"127.0.0.1:8000")])
    assert not await handshake([(b"origin", b"http://127.0.0.1:8000")])
    doubled = [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000")]
    assert not await handshake([*doubled, (b"origin", b"http://evil.example")])
    assert not await handshake([*doubled, (b"host", b"evil.example")])


async def test_csrf_trusted_origins_are_accepted_exactly(hosts):
    hosts.CSRF_TRUSTED_ORIGINS = ["https://dash.example.com", "https://*.example.org"]
    host = [(b"host", b"127.0.0.1:8000")]
    for origin, accepted in (
        ("https://dash.example.com", True),
        ("https://dash.example.com:443", True),
        ("http://dash.example.com", False),
        ("https://dash.example.com:8443", False),
        ("https://a.example.org", True),
        ("http://a.example.org", False),
        ("https://example.org.evil.com", False),
    ):
        assert await handshake([*host, (b"origin", origin.encode())]) is accepted, origin


# -- live: a real uvicorn with and without a configured proxy ----------------------------------


@pytest.fixture(scope="module")
def live_namespace(redis_server_url):
    import redis

    ns = f"test-signin-{uuid.uuid4().hex[:10]}"
    yield ns
    client = redis.Redis.from_url(redis_server_url, decode_responses=True)
    delete_namespace(client, ns)
    client.close()


def _server(server_env, django_db_blocker, namespace: str, proxies: str | None) -> AsgiServer:
    in_plain_thread(lambda: create_users(django_db_blocker))
    env = {**server_env, "COORDINATION_NAMESPACE": namespace, "COORDINATION_RELAY": "false"}
    env.pop("FORWARDED_ALLOW_IPS", None)
    if proxies is not None:
        env["FORWARDED_ALLOW_IPS"] = proxies
    return AsgiServer(env).start()


@pytest.fixture(scope="module")
def direct_server(server_env, django_db_blocker, live_namespace):
    """Started as `make run` starts it: no FORWARDED_ALLOW_IPS."""
    server = _server(server_env, django_db_blocker, live_namespace + "-direct", None)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxied_server(server_env, django_db_blocker, live_namespace):
    """Behind a (pretend) nginx on this host: FORWARDED_ALLOW_IPS=127.0.0.1."""
    server = _server(server_env, django_db_blocker, live_namespace + "-proxied", "127.0.0.1")
    yield server
    server.stop()


class HttpSession:
    """A cookie-keeping HTTP client that sends exactly the headers given (no redirects)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: str | None = None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            sent = dict(headers or {})
            if self.cookies:
                sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            text = response.read().decode("utf-8", "replace")
            for value in response.headers.get_all("Set-Cookie") or []:
                for name, morsel in SimpleCookie(value).items():
                    self.cookies[name] = morsel.value
            return response.status, text
        finally:
            connection.close()

    def sign_in(self, username: str, password: str, headers=None) -> int:
        status, page = self.request("GET", "/login/")
        assert status == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]
        body = f"csrfmiddlewaretoken={token}&username={username}&password={password}&next=%2F"
        return self.request(
            "POST",
            "/login/",
            body,
            {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
        )[0]


def test_rotating_forwarded_for_does_not_reset_the_throttle(direct_server, figures):
    browser = HttpSession(direct_server.port)
    for n in range(FAILURES_PER_USER):
        spoof = {
            "X-Forwarded-For": f"203.0.113.{n + 1}",
            "X-Real-IP": f"203.0.113.{n + 1}",
            "Forwarded": f"for=203.0.113.{n + 1}",
        }
        assert browser.sign_in("alice", "wrong", spoof) == 200
    fresh = {"X-Forwarded-For": "198.51.100.99"}
    assert browser.sign_in("alice", PASSWORD, fresh) == 429
    figures(
        "X-Forwarded-For rotation",
        "5 wrong passwords, each with another X-Forwarded-For, to a uvicorn started like `make run`",
        "the right password with a 6th address refused with 429 (the header is ignored)",
    )


def test_forwarded_for_is_honoured_from_a_configured_proxy(proxied_server):
    browser = HttpSession(proxied_server.port)
    for _ in range(FAILURES_PER_USER):
        assert browser.sign_in("alice", "wrong", {"X-Forwarded-For": "198.51.100.1"}) == 200
    assert browser.sign_in("alice", PASSWORD, {"X-Forwarded-For": "198.51.100.1"}) == 429
    assert browser.sign_in("alice", PASSWORD, {"X-Forwarded-For": "198.51.100.2"}) == 302


@pytest.mark.parametrize(
    ("which", "recorded"), [("direct_server", "127.0.0.1"), ("proxied_server", "198.51.100.7")]
)
def test_the_audit_log_records_the_real_peer(request, django_db_blocker, which, recorded):
    server = request.getfixturevalue(which)

    def issue():
        with django_db_blocker.unblock():
            return ApiToken.issue(User.objects.get(username="bob"), "audit-address")[1]

    token = in_plain_thread(issue)
    sid = f"addr-{uuid.uuid4().hex[:8]}"
    status, _ = HttpSession(server.port).request(
        "POST",
        f"/api/v1/interventions/note/{sid}",
        '{"text": "who am I"}',
        {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "X-Forwarded-For": "198.51.100.7",
        },
    )
    assert status == 409  # no such session: refused, and audited with the address

    def entry():
        with django_db_blocker.unblock():
            return AuditEntry.objects.get(session_id=sid).client_address

    assert in_plain_thread(entry) == recorded


@pytest.fixture(scope="module")
def ws_cookie(direct_server):
    """bob's session cookie (the database and SECRET_KEY are shared by both servers)."""
    browser = HttpSession(direct_server.port)
    assert browser.sign_in("bob", PASSWORD) == 302
    return f"sessionid={browser.cookies['sessionid']}"


def live_handshake(port: int, cookie: str, origin: str | None, headers=None) -> object:
    async def go():
        try:
            async with websockets.connect(
                f"ws://127.0.0.1:{port}/ws/sessions/",
                origin=origin,
                additional_headers={"Cookie": cookie, **(headers or {})},
                open_timeout=10,
            ):
                return "open"
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    return asyncio.run(go())


def test_live_websocket_origins(direct_server, ws_cookie, figures):
    port = direct_server.port
    assert live_handshake(port, ws_cookie, f"http://127.0.0.1:{port}") == "open"
    refused = [
        f"https://127.0.0.1:{port}",
        "http://127.0.0.1:9999",
        "http://127.0.0.1",
        "http://evil.example",
        f"http://localhost:{port}",
        "null",
        None,
    ]
    for origin in refused:
        assert live_handshake(port, ws_cookie, origin) == 403, origin
    # a forged X-Forwarded-Proto is ignored without a configured proxy
    forged = {"X-Forwarded-Proto": "https"}
    assert live_handshake(port, ws_cookie, f"https://127.0.0.1:{port}", forged) == 403
    figures(
        "websocket origins",
        f"handshakes with a session cookie from {len(refused) + 1} foreign origins "
        "(other scheme, port, host, null, none, forged X-Forwarded-Proto)",
        "all refused with 403; the page's own origin accepted",
    )


def test_live_websocket_scheme_from_a_configured_proxy(proxied_server, ws_cookie):
    port = proxied_server.port
    https = {"X-Forwarded-Proto": "https"}
    assert live_handshake(port, ws_cookie, f"https://127.0.0.1:{port}", https) == "open"
    assert live_handshake(port, ws_cookie, f"http://127.0.0.1:{port}", https) == 403
    assert live_handshake(port, ws_cookie, f"http://127.0.0.1:{port}") == "open"
