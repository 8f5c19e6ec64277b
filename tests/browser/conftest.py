"""Browser tests: a real uvicorn serving the ASGI app on the test database and test Redis,
driven by Debian's Chromium through Playwright."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib import import_module
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from django.conf import settings as django_settings
from django.db import connection

from coordination import AgentCoordinator, AtomicOperations, EventType, SessionIndex
from coordination.devtools.processes import AsgiServer

from ..conftest import delete_namespace

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "browser-pw-" + uuid.uuid4().hex[:8]


def database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def in_plain_thread(function):
    """Run database work in a thread with no event loop: pytest-asyncio or Playwright may be
    running one in this thread, and Django refuses sync queries there."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(function).result()


LiveServer = AsgiServer  # one uvicorn; stop() and start() again on the same port drop sockets


@pytest.fixture(scope="session")
def browser_namespace(redis_server_url):
    import redis

    ns = f"test-browser-{uuid.uuid4().hex[:10]}"
    yield ns
    client = redis.Redis.from_url(redis_server_url, decode_responses=True)
    delete_namespace(client, ns)
    client.close()


def create_users(django_db_blocker) -> str:
    """The browser tests' users; returns the database URL the live server should use."""
    from django.apps import apps as django_apps
    from django.contrib.auth.models import Group, User

    with django_db_blocker.unblock():
        if User.objects.filter(username__in=("alice", "bob", "victor")).count() == 3:
            return database_url()
        # the roles as migration 0002 creates them (a flush removed them too)
        import_module("coordination.migrations.0002_roles").create_roles(django_apps, None)
        supervisors = Group.objects.get(name="supervisors")
        viewers = Group.objects.get(name="viewers")
        for name, group in (("alice", supervisors), ("bob", supervisors), ("victor", viewers)):
            user, _ = User.objects.get_or_create(
                username=name, defaults={"is_staff": name == "alice", "is_superuser": False}
            )
            user.is_staff = name == "alice"
            user.set_password(PASSWORD)
            user.save()
            user.groups.add(group)
        return database_url()


@pytest.fixture(autouse=True)
def browser_users(request, django_db_blocker):
    """Transactional tests elsewhere in the run flush every table when they end, users
    included; the live server shares the database, so the users are put back when missing."""
    if "server_env" in request.fixturenames:
        # the test database first: run alone, a browser test is the first to need it
        request.getfixturevalue("server_env")
        in_plain_thread(lambda: create_users(django_db_blocker))


@pytest.fixture(scope="session")
def live_database(django_db_setup, django_db_blocker):
    """The test database for live servers. pytest-django creates it only when a collected test
    asks for the database, which a run of browser tests alone does not. Created and dropped in
    one thread of its own (Django's connections belong to the thread that made them)."""
    from django.db import connection as db_connection
    from django.test.utils import setup_databases, teardown_databases

    def create():
        with django_db_blocker.unblock():
            if "auth_user" in db_connection.introspection.table_names():
                return None
            return setup_databases(verbosity=0, interactive=False, aliases={"default"})

    def drop(created):
        with django_db_blocker.unblock():
            teardown_databases(created, verbosity=0)

    with ThreadPoolExecutor(1) as own_thread:
        created = own_thread.submit(create).result()
        yield
        if created:
            own_thread.submit(drop, created).result()


@pytest.fixture(scope="session")
def server_env(
    live_database, django_db_blocker, redis_server_url, browser_namespace, tmp_path_factory
):
    url = in_plain_thread(lambda: create_users(django_db_blocker))
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "coordinator_site.settings",
        "DATABASE_URL": url,
        "REDIS_URL": redis_server_url,
        "COORDINATION_NAMESPACE": browser_namespace,
        "COORDINATION_VAR_DIR": str(tmp_path_factory.mktemp("var")),
        "SECRET_KEY": django_settings.SECRET_KEY,
        "DEBUG": "true",
    }


@pytest.fixture(scope="session")
def asgi_server(server_env):
    server = LiveServer(server_env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chromium():
    """Chromium for one test module. Playwright's sync API runs an event loop in this thread
    while it is open, so it is closed after each module (database work is done in plain
    threads, see ``in_plain_thread``)."""
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)"
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def wait_live(page) -> None:
    # after a reconnect, a page that fell back to polling says "connected" once the socket
    # has stayed open for 2 s
    from playwright.sync_api import expect

    expect(page.locator("[data-live-indicator]")).to_have_attribute(
        "data-state", "connected", timeout=15_000
    )


def wait_for_js(page, expression: str, what: str, timeout: float = 15.0) -> None:
    """Poll a JavaScript expression until it is truthy. Not ``page.wait_for_function``: once
    its first check fails, Playwright polls with ``eval`` in the page, which the dashboard's
    Content-Security-Policy (no 'unsafe-eval') refuses, so a late condition failed the test."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"gave up after {timeout:g} s waiting for {what}"
        page.wait_for_timeout(50)


def login(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")


@pytest.fixture
def page_factory(chromium):
    contexts = []

    def make(base_url: str, username: str | None = "alice", **context_options):
        context = chromium.new_context(**context_options)
        contexts.append(context)
        page = context.new_page()
        page.dialogs = []
        page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
        page.console = []
        page.on("console", lambda m: page.console.append(m.text))
        if username:
            login(page, base_url, username)
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def start_fleet(redis_server_url, browser_namespace, agent_loop):
    """Start the demo desk (offline models) on the agent loop; it is stopped after the test
    and its sessions cleared, so they crowd no later test's queues."""
    from coordination.devtools.demo import Fleet

    running = []

    def start(settings):
        fleet = Fleet(redis_server_url, browser_namespace, settings, offline=True)
        task = asyncio.run_coroutine_threadsafe(fleet.run(), agent_loop)
        running.append((fleet, task))
        return fleet

    yield start
    for fleet, task in running:
        task.cancel()
        done, _ = concurrent.futures.wait([task], timeout=15)
        # a fleet still running would make sessions again after the clear below
        assert done, "the demo fleet did not stop within 15 s of being cancelled"
        asyncio.run_coroutine_threadsafe(
            clear_sessions(redis_server_url, browser_namespace, fleet.settings.prefix), agent_loop
        ).result(timeout=60)


@pytest.fixture(scope="session")
def agent_loop():
    """An event loop in its own thread: Playwright's sync API occupies the test thread's loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="agent-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)


@pytest.fixture
def core(redis_server_url, browser_namespace, agent_loop):
    """Publish from the test the way an agent would (each call on its own connection)."""

    class Core:
        def run(self, session_id: str, action):
            async def go():
                client = aioredis.Redis.from_url(redis_server_url, decode_responses=True)
                try:
                    return await action(
                        AgentCoordinator(session_id, client=client, namespace=browser_namespace)
                    )
                finally:
                    await client.aclose()

            return asyncio.run_coroutine_threadsafe(go(), agent_loop).result(timeout=30)

        def call(self, coro_factory):
            return asyncio.run_coroutine_threadsafe(coro_factory(), agent_loop).result(timeout=30)

        loop = agent_loop

        def publish(self, session_id: str, etype=EventType.MESSAGE, data=None):
            return self.run(session_id, lambda c: c.publish(etype, data or {}))

        def claim(self, session_id: str, agent: str) -> bool:
            return self.run(
                session_id,
                lambda c: AtomicOperations(
                    client=c.redis, namespace=browser_namespace
                ).claim_handoff(session_id, agent),
            )

    return Core()


async def clear_sessions(redis_url: str, namespace: str, prefix: str) -> int:
    """Clear every session whose id starts with ``prefix`` (index entries included)."""
    index = SessionIndex(redis_url, namespace=namespace)
    cleared, cursor = 0, None
    while True:
        page = await index.list_sessions(prefix=prefix, cursor=cursor, limit=200)
        for summary in page.sessions:
            await AgentCoordinator(summary.session_id, redis_url, namespace=namespace).clear()
            cleared += 1
        cursor = page.next_cursor
        if cursor is None:
            return cleared


async def clear_queued(redis_url: str, namespace: str) -> int:
    """Clear the sessions waiting in the overview's queues (escalations, approvals, pickup)."""
    index = SessionIndex(redis_url, namespace=namespace)
    cleared = 0
    for _ in range(100):  # 200 of each queue per round; 100 rounds is far more than any run
        ids = {s.session_id for s in await index.escalation_queue(limit=200)}
        ids |= {a.session_id for a in (await index.pending_approvals(limit=200)).approvals}
        waiting = await index.list_sessions(status="waiting", limit=200)
        ids |= {s.session_id for s in waiting.sessions}
        if not ids:
            return cleared
        for session_id in ids:
            await AgentCoordinator(session_id, redis_url, namespace=namespace).clear()
        cleared += len(ids)
    raise AssertionError("the overview's queues kept filling while no test was running")


@pytest.fixture
def sid(redis_server_url, browser_namespace, agent_loop):
    """A session id no other test uses (the browser server shares one namespace).

    The overview's queues show the oldest 20 of each: a session another test left queued
    (its ids need not start with its ``sid``) would push this test's out of sight. Tests run
    one at a time, so whatever is queued when a test starts is left over and is cleared; the
    test's own sessions (this id and ids starting with it) are cleared afterwards too."""
    asyncio.run_coroutine_threadsafe(
        clear_queued(redis_server_url, browser_namespace), agent_loop
    ).result(timeout=60)
    value = f"b-{uuid.uuid4().hex[:10]}"
    yield value
    asyncio.run_coroutine_threadsafe(
        clear_sessions(redis_server_url, browser_namespace, value), agent_loop
    ).result(timeout=60)
