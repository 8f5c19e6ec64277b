"""The trust boundary on the channel layer, and a relay no feed entry can stop.

Written as an agent holding REDIS_URL would attack: forged channel-layer messages built with
msgpack exactly as channels_redis builds them and PUBLISHed to the real channel names (found
with PUBSUB CHANNELS), genuine messages captured and altered or replayed elsewhere, a flood,
and feed entries XADDed by hand with whatever bytes an agent can write. Real Redis throughout;
the page-level attacks run in real Chromium against a live server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import urllib.error
import urllib.request
import uuid

import msgpack
import pytest
import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient
from playwright.sync_api import expect

from coordination import AgentCoordinator, EventType, SessionIndex
from coordination.realtime import relay as live
from coordination.realtime.channel_layer import AuthenticatedPubSubLayer
from coordination.realtime.relay import Relay, session_group
from coordination.realtime.routing import websocket_urlpatterns

from ..browser.conftest import (  # noqa: F401
    LiveServer,
    browser_users,
    live_database,
    page_factory,
    wait_live,
)
from ..web.conftest import coordination_settings, supervisor, viewer  # noqa: F401

MARKUP = (
    '<div id="pwned" hx-post="/sessions/{sid}/act/close/" hx-trigger="load">pwned</div>'
    '<div id="pwned-admin" hx-post="/admin/auth/user/add/" hx-trigger="load" '
    'hx-vals=\'{{"username": "mallory", "password1": "Pw-mallory-1", "password2": "Pw-mallory-1"}}\'>'
    "</div>"
    '<ol hx-swap-oob="afterbegin:#timeline"><li id="pwned-row">forged</li></ol>'
)


# -- the attacker's tools: plain redis-py and msgpack, no dashboard code --


def group_channel(namespace: str, session_id: str) -> str:
    """The Redis channel of a session's group, as anyone reading channels_redis can work out."""
    digest = hashlib.sha1(session_id.encode()).hexdigest()
    return f"{namespace}:asgi__group__coord.session.{digest}"


def forged(message: dict) -> bytes:
    """A message as the stock RedisPubSubChannelLayer serialises it (msgpack, no key)."""
    return msgpack.packb(message)


def forged_events(sid: str, event_id: str = "9999999999999-0") -> dict:
    html = MARKUP.format(sid=sid)
    return {"type": "session.events", "events": [{"id": event_id, "type": "message", "html": html}]}


def layer_channels(attacker: redis.Redis, namespace: str) -> list[bytes]:
    """Every channel-layer channel open in this namespace (the groups and each consumer's own)."""
    return attacker.pubsub_channels(f"{namespace}:asgi*")


@pytest.fixture
def attacker(redis_url):
    client = redis.Redis.from_url(redis_url)  # bytes in, bytes out: whatever an agent likes
    yield client
    client.close()


# -- in process: the consumer behind a WebsocketCommunicator, the relay as a task --


async def open_page(user, sid: str) -> WebsocketCommunicator:
    page = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/session/{sid}/")
    page.scope["user"] = user
    connected, _ = await page.connect()
    assert connected
    await page.send_json_to({"resume": "0"})
    return page


async def ready(page: WebsocketCommunicator, coord: AgentCoordinator) -> None:
    """Wait until the page has resumed and gets live events: from then on every row it is sent
    comes through the channel layer, in the order Redis delivered the messages."""
    event = await coord.publish(EventType.NOTE, {"ready": True})
    assert f'data-event-id="{event.id}"' in await next_timeline_frame(page)


async def start_relay(redis_url: str, namespace: str) -> tuple[Relay, asyncio.Task]:
    relay = Relay(
        SessionIndex(redis_url, namespace=namespace),
        lease_ttl=1.0,
        flush_interval=0.05,
        worker_id=f"test-{uuid.uuid4().hex[:6]}",
    )
    task = asyncio.create_task(relay.run())
    async with asyncio.timeout(15):
        await relay.reading.wait()  # leading, from a cursor: what is published next is relayed
    return relay, task


async def next_timeline_frame(page: WebsocketCommunicator) -> str:
    """The next frame that adds rows to the timeline (header redraws may come in between)."""
    async with asyncio.timeout(15):
        while True:
            frame = await page.receive_from(timeout=15)
            if "#timeline" in frame:
                return frame


async def until_channels(attacker: redis.Redis, namespace: str, count: int) -> list[bytes]:
    async with asyncio.timeout(15):
        while len(found := layer_channels(attacker, namespace)) < count:
            await asyncio.sleep(0.01)  # SUBSCRIBE is acknowledged to the subscriber only
    return found


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", ["viewer", "supervisor"])
def test_forged_channel_layer_messages_change_no_page(
    role, request, redis_url, namespace, attacker, caplog, figures
):
    user = request.getfixturevalue(role)
    sid = f"tb-{uuid.uuid4().hex[:8]}"
    coord = AgentCoordinator(sid, redis_url, namespace=namespace)
    layer = get_channel_layer()
    layer.warn.reset()

    async def scenario():
        relay, task = await start_relay(redis_url, namespace)
        page = await open_page(user, sid)
        try:
            await coord.publish(EventType.MESSAGE, {"n": 0})
            assert 'data-event-id="' in await next_timeline_frame(page)
            # the group's channel and the page's own channel, as PUBSUB CHANNELS shows them
            channels = await until_channels(attacker, namespace, 2)
            assert group_channel(namespace, sid).encode() in channels
            rejected = layer.rejected
            attacks = [
                forged(forged_events(sid)),
                forged({"type": "websocket.receive", "text": '{"resume": "0"}'}),
                forged({"type": "websocket.disconnect", "code": 1000}),
                forged({"type": "session.audit"}),
                b"\x01" + b"\x00" * 32 + forged(forged_events(sid)),  # our format, no key
                b"not msgpack at all \xff",
            ]
            for raw in attacks:
                for channel in channels:
                    attacker.publish(channel, raw)
            genuine = await coord.publish(EventType.MESSAGE, {"n": 1})
            frame = await next_timeline_frame(page)  # the forged ones came first, if at all
            assert f'data-event-id="{genuine.id}"' in frame
            assert "pwned" not in frame and "forged" not in frame
            assert layer.rejected - rejected == len(attacks) * len(channels)
            # the socket is still open: a later event arrives too
            later = await coord.publish(EventType.MESSAGE, {"n": 2})
            assert f'data-event-id="{later.id}"' in await next_timeline_frame(page)
            assert relay.restarts == 0
        finally:
            await page.disconnect()
            await relay.stop(task)

    with caplog.at_level(logging.WARNING, logger="coordination.realtime.channel_layer"):
        async_to_sync(scenario)()
    dropped = [r for r in caplog.records if r.name == "coordination.realtime.channel_layer"]
    assert len(dropped) == 1  # rate-limited: one line for the whole burst
    assert "dropped a message" in dropped[0].getMessage()
    assert "pwned" not in dropped[0].getMessage()  # the attacker's bytes are not logged
    figures(
        f"forged channel-layer messages ({role})",
        "markup, websocket.receive/disconnect, session.audit, unsigned and garbage messages "
        "PUBLISHed to the session's group and the page's own channel",
        "all dropped (one warning line); the page got only genuine events, socket still open",
    )


@pytest.mark.django_db(transaction=True)
def test_captured_messages_altered_or_replayed_elsewhere_are_dropped(
    request, redis_url, namespace, attacker, figures
):
    user = request.getfixturevalue("viewer")
    sid, other = f"tb-{uuid.uuid4().hex[:8]}", f"tb-{uuid.uuid4().hex[:8]}"
    coord = AgentCoordinator(sid, redis_url, namespace=namespace)
    layer = get_channel_layer()
    spy = attacker.pubsub()
    spy.subscribe(group_channel(namespace, sid))
    spy.get_message(timeout=5)  # the subscribe confirmation

    async def scenario():
        relay, task = await start_relay(redis_url, namespace)
        page = await open_page(user, sid)
        victim = await open_page(user, other)
        try:
            await ready(victim, AgentCoordinator(other, redis_url, namespace=namespace))
            first = await coord.publish(EventType.MESSAGE, {"text": "genuine"})
            await next_timeline_frame(page)
            captured = None
            async with asyncio.timeout(15):
                while captured is None:
                    message = await asyncio.to_thread(spy.get_message, timeout=1)
                    if message and message["type"] == "message":
                        captured = message["data"]
            assert b"genuine" in captured
            rejected = layer.rejected
            altered = captured.replace(b"genuine", b"<b>pwned</b>")
            flipped = captured[:-1] + bytes([captured[-1] ^ 1])
            attacker.publish(group_channel(namespace, sid), altered)
            attacker.publish(group_channel(namespace, sid), flipped)
            attacker.publish(group_channel(namespace, other), captured)  # replayed elsewhere
            # sealed with another deployment's SECRET_KEY, to the right channel
            elsewhere = AuthenticatedPubSubLayer(
                hosts=[redis_url], prefix=f"{namespace}:asgi", secret_keys=["another-deployment"]
            )
            await elsewhere.group_send(session_group(sid), forged_events(sid))
            # sealed by this deployment, but a type this page does not take
            await layer.group_send(session_group(sid), {"type": "sessions.changed", "ids": [sid]})
            second = await coord.publish(EventType.MESSAGE, {"n": 2})
            frame = await next_timeline_frame(page)
            assert f'data-event-id="{second.id}"' in frame and "pwned" not in frame
            on_other = await coord_other_event(redis_url, namespace, other)
            frame = await next_timeline_frame(victim)
            assert f'data-event-id="{on_other}"' in frame
            assert f'data-event-id="{first.id}"' not in frame  # the replay showed nothing
            assert layer.rejected - rejected == 4  # altered, flipped, replayed, other key
            await elsewhere.flush()
        finally:
            await page.disconnect()
            await victim.disconnect()
            await relay.stop(task)

    try:
        async_to_sync(scenario)()
    finally:
        spy.close()
    figures(
        "captured channel-layer messages",
        "a genuine message altered, one bit flipped, replayed to another session's group, "
        "and one sealed with another SECRET_KEY",
        "all dropped; the other session's page showed none of it",
    )


async def coord_other_event(redis_url: str, namespace: str, sid: str) -> str:
    return (
        await AgentCoordinator(sid, redis_url, namespace=namespace).publish(EventType.NOTE, {})
    ).id


@pytest.mark.django_db(transaction=True)
def test_a_flood_of_forged_messages_leaves_relay_and_pages_working(
    request, redis_url, namespace, attacker, caplog, figures
):
    user = request.getfixturevalue("supervisor")
    sid = f"tb-{uuid.uuid4().hex[:8]}"
    coord = AgentCoordinator(sid, redis_url, namespace=namespace)
    layer = get_channel_layer()
    layer.warn.reset()
    flood = 1000

    async def scenario():
        relay, task = await start_relay(redis_url, namespace)
        page = await open_page(user, sid)
        try:
            await ready(page, coord)
            channels = await until_channels(attacker, namespace, 2)
            rejected = layer.rejected
            started = time.monotonic()
            with attacker.pipeline(transaction=False) as pipe:
                for n in range(flood):
                    pipe.publish(
                        group_channel(namespace, sid),
                        forged(forged_events(sid, f"9999999999999-{n}")),
                    )
                pipe.execute()
            genuine = await coord.publish(EventType.MESSAGE, {"after": "flood"})
            frame = await next_timeline_frame(page)
            elapsed = time.monotonic() - started
            assert f'data-event-id="{genuine.id}"' in frame and "pwned" not in frame
            assert layer.rejected - rejected == flood
            assert relay.restarts == 0 and relay.is_leader
            assert channels
            return elapsed
        finally:
            await page.disconnect()
            await relay.stop(task)

    with caplog.at_level(logging.WARNING, logger="coordination.realtime.channel_layer"):
        elapsed = async_to_sync(scenario)()
    lines = [r for r in caplog.records if r.name == "coordination.realtime.channel_layer"]
    assert len(lines) <= 2
    figures(
        "flood of forged channel-layer messages",
        f"{flood} forged messages PUBLISHed to one session's group",
        f"all dropped with {len(lines)} log line(s); the next genuine event reached the page "
        f"{elapsed:.2f} s after the flood began",
    )


# -- the relay against feed entries an agent wrote by hand --


def poison_entries(sid: str) -> list[dict[bytes, bytes]]:
    """Feed entries as an agent with REDIS_URL can XADD them, around the core."""
    ok = sid.encode()
    return [
        {b"s": ok, b"e": b"1-1", b"t": b"message", b"d": b'{"x": "\\ud800"}'},  # lone surrogate
        {b"s": ok, b"e": b"1-2", b"t": b"\xed\xa0\x80", b"d": b"{}"},  # surrogate as bytes
        {b"s": ok, b"e": b"1-3", b"t": b"message", b"d": b"{}", b"src": b"\xff\xfe"},
        {b"s": b"bad\xed\xa0\x80id", b"e": b"1-4", b"t": b"message", b"d": b"{}"},
        {b"s": b"", b"e": b"1-5"},
        {b"e": b"1-6", b"t": b"message"},  # no session
        {b"s": ok},  # no event id
        {b"s": ok, b"e": b"9" * 5000, b"d": b"{}"},  # int() refuses this many digits
        {b"s": ok, b"e": b"not-an-id", b"d": b"{}"},
        {b"s": ok, b"e": "\u0661-\u0661".encode(), b"d": b"{}"},  # Arabic-Indic digits
        {b"s": ok, b"e": b"2-1\n", b"d": b"{}"},  # a trailing newline
        {b"s": ok, b"e": b"1-7", b"t": b"message", b"d": b"not json {"},
        {b"s": ok, b"e": b"1-8", b"t": b"message", b"d": b"5"},
        {b"s": ok, b"e": b"1-9", b"t": b"message", b"d": b"[1, 2]"},
        {b"s": ok, b"e": b"1-10", b"t": b"message", b"d": b"true"},
        {b"s": ok, b"e": b"1-11", b"t": b"message", b"d": b"[" * 100_000},
        {
            b"s": ok,
            b"e": b"1-12",
            b"t": b"message",
            b"d": json.dumps({"x": "y" * 2_000_000}).encode(),
        },
        {b"s": ok, b"e": b"1-13", b"t": b"<script>alert(1)</script>", b"d": b"{}"},
        {b"s": ok, b"e": b"1-14", b"t": b"message", b"d": b'"' + b"z" * 20_000_000 + b'"'},
        {b"junk": b"\x00\xff"},
    ]


def test_poisoned_feed_entries_do_not_stop_the_relay(redis_url, namespace, attacker, figures):
    sid = f"tb-{uuid.uuid4().hex[:8]}"
    coord = AgentCoordinator(sid, redis_url, namespace=namespace)
    index = SessionIndex(redis_url, namespace=namespace)
    entries = poison_entries(sid)

    async def scenario():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(session_group(sid), channel)
        relay, task = await start_relay(redis_url, namespace)
        try:
            for fields in entries:
                attacker.xadd(index.keys.feed, fields)
            genuine = await coord.publish(EventType.MESSAGE, {"after": "poison"})
            items = []
            async with asyncio.timeout(30):
                while genuine.id not in [i["id"] for i in items]:
                    message = await layer.receive(channel)
                    items.extend(message["events"])
            assert relay.restarts == 0 and relay.is_leader and not task.done()
            return relay, items
        finally:
            await relay.stop(task)
            await layer.group_discard(session_group(sid), channel)

    relay, items = async_to_sync(scenario)()
    shown = {i["id"]: i for i in items}
    # every entry naming this session and a valid event id became a row; the rest skipped
    assert sorted(shown) == sorted(
        ["1-1", "1-2", "1-3", "1-7", "1-8", "1-9", "1-10", "1-11", "1-12", "1-13", "1-14"]
        + [items[-1]["id"]]
    )
    for item in items:
        item["html"].encode("utf-8")  # nothing that cannot be sent or shown
        assert "<script>" not in item["html"]
    assert "\ufffd" in shown["1-1"]["html"] and "\ufffd" in shown["1-2"]["html"]
    assert len(shown["1-12"]["html"]) <= live.MAX_ITEM_CHARS
    assert "too large to show live" in shown["1-14"]["html"]  # 20 MB: not even decoded
    assert relay.skipped == 9
    figures(
        "poisoned feed entries",
        f"{len(entries)} entries XADDed by hand: lone surrogates (JSON and bytes), bytes that "
        "are not UTF-8, missing fields, ids of 5,000 digits, payloads that are not JSON objects, "
        "100,000 nested brackets, 2 MB and 20 MB payloads, markup in the type",
        f"relay never restarted; {len(shown) - 1} shown (malformed ones as such), "
        f"{relay.skipped} skipped, the next genuine event relayed",
    )


def test_a_relay_loop_that_fails_restarts_and_keeps_relaying(redis_url, namespace, caplog):
    sid = f"tb-{uuid.uuid4().hex[:8]}"
    coord = AgentCoordinator(sid, redis_url, namespace=namespace)

    class FailsOnce(Relay):
        """A bug in the loop (any exception), the first time it leads."""

        failed = False

        async def _lead(self, layer):
            if not self.failed:
                self.failed = True
                raise RuntimeError("a bug nobody foresaw")
            await super()._lead(layer)

    async def scenario():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(session_group(sid), channel)
        relay = FailsOnce(
            SessionIndex(redis_url, namespace=namespace),
            lease_ttl=1.0,
            flush_interval=0.05,
            worker_id="fails-once",
        )
        task = asyncio.create_task(relay.run())
        try:
            async with asyncio.timeout(15):
                await relay.reading.wait()  # only after the restart: the first _lead raised
            assert relay.restarts == 1
            event = await coord.publish(EventType.MESSAGE, {})
            async with asyncio.timeout(15):
                message = await layer.receive(channel)
            assert [i["id"] for i in message["events"]] == [event.id]
            assert not task.done()
        finally:
            await relay.stop(task)
            await layer.group_discard(session_group(sid), channel)

    with caplog.at_level(logging.ERROR, logger="coordination.realtime.relay"):
        async_to_sync(scenario)()
    assert any("restarting in 1 s" in r.getMessage() for r in caplog.records)


# -- /healthz reports this process's relay and the lease --


@pytest.fixture
def process_relay():
    yield
    live._process = None  # as in a process started without the ASGI lifespan


@pytest.mark.django_db
async def test_healthz_reports_a_dead_relay_and_a_missing_leader(
    redis_url, namespace, process_relay
):
    client = AsyncClient()
    relay, task = await start_relay(redis_url, namespace)
    live.register_process_relay(relay, task)
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "redis": "ok",
        "database": "ok",
        "relay": "leading",
        "relay_lease": "held",
    }
    await relay.stop(task)  # the task ends: this process's relay is dead
    response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["relay"] == "stopped"
    assert response.json()["relay_lease"] == "none"
    assert "127.0.0.1" not in response.content.decode() and "test-" not in response.content.decode()

    # a process without a relay: healthy while someone leads, not once nobody has for a lease
    idle = asyncio.create_task(asyncio.Event().wait())
    live.register_process_relay(None, idle)
    try:
        response = await client.get("/healthz")
        assert response.json()["relay"] == "off"
        assert response.status_code == 200  # the lease may just be changing hands
        live._process.lease_missing_since -= 6.0  # as if 6 s (over the 5 s lease) had passed
        response = await client.get("/healthz")
        assert response.status_code == 503
        assert response.json()["relay_lease"] == "none"
        relay, task = await start_relay(redis_url, namespace)  # another process takes over
        try:
            response = await client.get("/healthz")
            assert response.status_code == 200 and response.json()["relay_lease"] == "held"
        finally:
            await relay.stop(task)
    finally:
        idle.cancel()


# -- in a real browser, against a live server --


def attack_every_channel(attacker: redis.Redis, namespace: str, sid: str) -> int:
    """What an agent would PUBLISH to every channel-layer channel it can see: markup that htmx
    would swap in and POST from, the server's own message types, and bytes in our format."""
    messages = [
        forged(forged_events(sid)),
        forged({"type": "sessions.changed", "ids": [sid]}),
        forged({"type": "websocket.receive", "text": '{"resume": "0"}'}),
        forged({"type": "websocket.disconnect", "code": 1000}),
        forged({"type": "session.audit"}),
        b"\x01" + b"\x00" * 32 + forged(forged_events(sid)),
    ]
    channels = layer_channels(attacker, namespace)
    assert group_channel(namespace, sid).encode() in channels
    for raw in messages:
        for channel in channels:
            attacker.publish(channel, raw)
    return len(messages) * len(channels)


def watch_posts(page) -> list[str]:
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    return posts


def healthz(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def superuser(django_db_blocker):
    """A superuser watching: forged markup aimed at the admin would create accounts."""
    from django.contrib.auth.models import User

    from ..browser.conftest import PASSWORD, in_plain_thread

    def create():
        with django_db_blocker.unblock():
            user, _ = User.objects.get_or_create(username="tb-root")
            user.is_staff = user.is_superuser = True
            user.set_password(PASSWORD)
            user.save()

    def remove():
        with django_db_blocker.unblock():
            User.objects.filter(username__in=("tb-root", "mallory")).delete()

    in_plain_thread(create)
    yield "tb-root"
    in_plain_thread(remove)


@pytest.mark.browser
@pytest.mark.parametrize("username", ["victor", "alice", "superuser"])
def test_forged_markup_never_reaches_a_live_page(
    username, request, asgi_server, core, sid, browser_namespace, redis_server_url, figures
):
    """As a viewer (victor), a supervisor (alice) and a superuser."""
    from django.contrib.auth.models import User

    from ..browser.conftest import in_plain_thread

    if username == "superuser":
        username = request.getfixturevalue("superuser")
    make_page = request.getfixturevalue("page_factory")
    core.publish(sid, EventType.MESSAGE, {"n": 0})
    page = make_page(asgi_server.url, username)
    posts = watch_posts(page)
    page.goto(f"{asgi_server.url}/sessions/{sid}/")
    wait_live(page)
    listing = page.context.new_page()
    list_posts = watch_posts(listing)
    listing.goto(f"{asgi_server.url}/sessions/")
    wait_live(listing)
    attacker = redis.Redis.from_url(redis_server_url)
    try:
        sent = attack_every_channel(attacker, browser_namespace, sid)
    finally:
        attacker.close()
    core.publish(sid, EventType.MESSAGE, {"text": "after the attack"})
    expect(page.locator("#timeline .event").first).to_contain_text("after the attack")
    newer = sid + "-newer"
    core.publish(newer, EventType.MESSAGE, {})
    expect(listing.locator("#session-rows tr").first).to_have_attribute("data-session-id", newer)
    for p in (page, listing):
        expect(p.locator("[data-live-indicator]")).to_have_attribute("data-state", "connected")
        assert p.locator("#pwned, #pwned-admin, #pwned-row").count() == 0
    assert page.locator("#timeline .event").count() == 2
    assert posts == [] and list_posts == []
    events = core.run(sid, lambda c: c.events())
    assert EventType.SESSION_CLOSED not in [e.type for e in events]
    django_db_blocker = request.getfixturevalue("django_db_blocker")

    def mallory_exists() -> bool:
        with django_db_blocker.unblock():
            return User.objects.filter(username="mallory").exists()

    assert not in_plain_thread(mallory_exists)
    figures(
        f"forged channel-layer messages on live pages ({username})",
        f"{sent} forged messages (markup with hx-post, websocket.receive/disconnect, "
        "sessions.changed, session.audit, our format without the key) PUBLISHed to every "
        "channel-layer channel of a live server",
        "no page changed, no POST fired, both sockets stayed connected; later events arrived",
    )


@pytest.mark.browser
def test_a_flood_and_poisoned_feed_leave_relay_pages_and_healthz_working(
    request, asgi_server, core, sid, browser_namespace, redis_server_url, figures
):
    make_page = request.getfixturevalue("page_factory")
    first = core.publish(sid, EventType.MESSAGE, {"n": 0})
    page = make_page(asgi_server.url, "alice")
    posts = watch_posts(page)
    page.goto(f"{asgi_server.url}/sessions/{sid}/")
    wait_live(page)
    feed = SessionIndex(redis_server_url, namespace=browser_namespace).keys.feed
    attacker = redis.Redis.from_url(redis_server_url)
    ms, seq = (int(part) for part in first.id.split("-"))
    try:
        with attacker.pipeline(transaction=False) as pipe:
            for n in range(1000):
                pipe.publish(
                    group_channel(browser_namespace, sid),
                    forged(forged_events(sid, f"9999999999999-{n}")),
                )
            pipe.execute()
        entries, shown = poison_entries(sid), 0
        for k, fields in enumerate(entries):
            if fields.get(b"s") == sid.encode() and fields.get(b"e", b"").startswith(b"1-"):
                fields[b"e"] = f"{ms}-{seq + 1 + k}".encode()  # newer than what the page has
                shown += 1  # a valid session and event id: a row, malformed or not
            attacker.xadd(feed, fields)
    finally:
        attacker.close()
    expect(page.locator("#timeline .event")).to_have_count(1 + shown, timeout=30_000)
    core.publish(sid, EventType.MESSAGE, {"text": "after the poison"})
    expect(page.locator("#timeline .event").first).to_contain_text("after the poison")
    expect(page.locator("[data-live-indicator]")).to_have_attribute("data-state", "connected")
    assert page.locator("#pwned, #pwned-row").count() == 0 and posts == []
    assert "\ufffd" in page.locator("#timeline").inner_text()
    status, body = healthz(asgi_server.url)
    assert status == 200, body
    assert body["relay"] in ("leading", "standby") and body["relay_lease"] == "held"
    figures(
        "flood and poisoned feed under a live page",
        f"1,000 forged channel-layer messages, then {len(entries)} hand-written feed entries "
        "(lone surrogates, bad UTF-8, missing fields, non-JSON, 2 and 20 MB, 100,000 brackets)",
        f"{shown} shown as malformed rows, the rest skipped; the relay kept relaying, "
        "/healthz 200 with the lease held",
    )


@pytest.mark.browser
def test_healthz_says_when_no_process_relays_and_another_takes_over(server_env, figures):
    env = {
        **server_env,
        "COORDINATION_NAMESPACE": f"test-relayless-{uuid.uuid4().hex[:8]}",
        "COORDINATION_RELAY": "false",
    }
    relayless = LiveServer(env).start()
    relaying = None
    try:
        deadline = time.monotonic() + 20
        while (reply := healthz(relayless.url))[0] != 503:  # the lease runs out on Redis's clock
            assert time.monotonic() < deadline, reply
            time.sleep(0.2)
        assert reply[1]["relay"] == "off" and reply[1]["relay_lease"] == "none"
        assert "127.0.0.1" not in json.dumps(reply[1])
        relaying = LiveServer({**env, "COORDINATION_RELAY": "true"}).start()
        status, body = healthz(relaying.url)
        assert body["relay"] in ("leading", "standby")
        deadline = time.monotonic() + 20
        while (reply := healthz(relayless.url))[0] != 200:
            assert time.monotonic() < deadline, reply
            time.sleep(0.2)
        assert reply[1]["relay_lease"] == "held"
    finally:
        relayless.stop()
        if relaying is not None:
            relaying.stop()
    figures(
        "no process relaying",
        "a live server started with COORDINATION_RELAY=false and no relay anywhere, "
        "then a second server with its relay",
        "/healthz 503 (relay off, lease none) once the lease had been missing for a lease "
        "time; 200 with the lease held once the other process took it",
    )
