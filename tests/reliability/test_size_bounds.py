"""Large values bounded in bytes: a session of 20 one-megabyte events must not turn into a
76 MiB page or a 687 MiB websocket frame; the whole value stays one login-protected click
away; a page that does not say where to resume cannot make the server hold unbounded rows."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from asgiref.sync import async_to_sync
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.urls import reverse
from django.utils.html import escape
from playwright.sync_api import expect

from coordination import AgentCoordinator, EventType, SessionIndex
from coordination.foundation.display import PAYLOAD_DISPLAY_BYTES
from coordination.realtime.consumers import BUFFER_BYTES, FRAME_BYTES, REPLAY_BYTES, SessionConsumer
from coordination.realtime.routing import websocket_urlpatterns

from ..browser.conftest import (  # noqa: F401  (live_database: server_env needs it)
    live_database,
    page_factory,
    wait_live,
)
from ..waiting import eventually
from ..web.conftest import coordination_settings, supervisor, viewer  # noqa: F401

MB = 1_000_000
EVENTS = 20
# A page of 20 such events, its header and chrome: each row shows at most PAYLOAD_DISPLAY_BYTES.
PAGE_BOUND = 1024 * 1024
# One replay: REPLAY_BYTES of rows, plus at most one row past it, the header and the notice.
REPLAY_BOUND = REPLAY_BYTES + 256 * 1024
FRAME_BOUND = FRAME_BYTES + 128 * 1024


def publish_large(
    redis_url: str, namespace: str, sid: str, n: int = EVENTS, size: int = MB, char: str = "x"
):
    async def go():
        coord = AgentCoordinator(sid, redis_url, namespace=namespace)
        ids = []
        for i in range(n):
            event = await coord.publish(EventType.MESSAGE, {"i": i, "blob": f"{i}-" + char * size})
            ids.append(event.id)
        await coord.set_state("big", "y" * size)
        await coord.set_state("small", {"ok": True})
        return ids

    return async_to_sync(go)()


@pytest.fixture
def large_session(redis_url, namespace):
    sid = "large-1"
    return sid, publish_large(redis_url, namespace, sid)


@pytest.mark.django_db
def test_session_page_and_timeline_of_megabyte_events_stay_small(
    client,
    supervisor,  # noqa: F811
    large_session,
    figures,
):
    sid, ids = large_session
    client.force_login(supervisor)
    page = client.get(reverse("coordination:session", args=[sid]))
    assert page.status_code == 200
    body = page.content.decode()
    assert len(page.content) < PAGE_BOUND, len(page.content)
    # every large event, the state_changed event of the big state value, and that value
    assert body.count("Show the whole value") == EVENTS + 2
    for event_id in ids:
        assert f'data-event-id="{event_id}"' in body
    timeline = client.get(reverse("coordination:timeline", args=[sid]))
    assert timeline.status_code == 200 and len(timeline.content) < PAGE_BOUND
    figures(
        "session page of 20 events of 1 MB",
        f"GET the session page (payload shown up to {PAYLOAD_DISPLAY_BYTES} bytes each)",
        f"{len(page.content)} bytes (was 76 MiB); timeline {len(timeline.content)} bytes",
    )


@pytest.mark.django_db
def test_the_whole_value_is_one_login_protected_click_away(
    client,
    viewer,  # noqa: F811
    large_session,
):
    sid, ids = large_session
    page = client.get(reverse("coordination:session", args=[sid]))
    assert page.status_code == 302  # anonymous: to the login page
    client.force_login(viewer)
    body = client.get(reverse("coordination:session", args=[sid])).content.decode()
    links = [u.replace("&amp;", "&") for u in re.findall(r'href="(/payload/\?[^"]+)"', body)]
    assert len(links) == EVENTS + 2
    newest = next(u for u in links if u.endswith(f"event={ids[-1]}"))
    whole = client.get(newest)
    assert whole.status_code == 200
    text = whole.content.decode()
    assert f"{EVENTS - 1}-" + "x" * MB in text  # the newest event, whole
    assert len(whole.content) < 2 * MB + 64 * 1024  # bounded by the core's payload limit
    state = client.get(f"/payload/?session={sid}&key=big")
    assert state.status_code == 200 and "y" * MB in state.content.decode()
    # an anonymous visitor, a bad event id, a missing one and a foreign session: never the value
    client.logout()
    anonymous = client.get(newest)
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    client.force_login(viewer)
    assert client.get(f"/payload/?session={sid}&event=nope").status_code == 400
    assert client.get(f"/payload/?session={sid}&event=1-0").status_code == 404
    assert client.get(f"/payload/?session=other&event={ids[0]}").status_code == 404
    assert client.get("/payload/?session=%00").status_code == 400
    assert client.get(f"/payload/?session={sid}").status_code == 400


@pytest.mark.django_db
def test_whole_value_view_escapes_what_it_shows(
    client,
    viewer,  # noqa: F811
    redis_url,
    namespace,
):
    async def go():
        coord = AgentCoordinator("esc-1", redis_url, namespace=namespace)
        return await coord.publish(EventType.MESSAGE, {"x": "<script>alert(1)</script>\ud800"})

    event = async_to_sync(go)()
    client.force_login(viewer)
    response = client.get(f"/payload/?session=esc-1&event={event.id}")
    text = response.content.decode("utf-8")
    assert response.status_code == 200
    assert "<script>alert(1)" not in text
    assert escape("<script>alert(1)</script>\ufffd") in text


def _replay(user, sid: str, resume: str = "0") -> list[str]:
    """Frames a page gets after sending ``{"resume": resume}``, until the socket goes quiet."""

    async def go() -> list[str]:
        ws = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/session/{sid}/")
        ws.scope["user"] = user
        connected, _ = await ws.connect()
        assert connected
        frames: list[str] = []
        try:
            await ws.send_json_to({"resume": resume})
            async with asyncio.timeout(60):
                # nothing more within 3 s: the replay is over
                while not await ws.receive_nothing(timeout=3, interval=0.05):
                    frames.append(await ws.receive_from(timeout=10))
        finally:
            await ws.disconnect()
        return frames

    return async_to_sync(go)()


@pytest.mark.django_db(transaction=True)
def test_resume_from_zero_sends_bounded_frames(
    supervisor,  # noqa: F811
    large_session,
    figures,
):
    sid, ids = large_session
    frames = _replay(supervisor, sid)
    sizes = [len(f.encode()) for f in frames]
    text = "".join(frames)
    assert all(f'data-event-id="{i}"' in text for i in ids)  # all 20 fit, cut
    assert max(sizes) < FRAME_BOUND, sizes
    assert sum(sizes) < REPLAY_BOUND, sum(sizes)
    assert "replay-gap" not in text
    figures(
        "resume 0 on a session of 20 events of 1 MB",
        '{"resume": "0"} on the session websocket',
        f"{len(frames)} frames, largest {max(sizes)} bytes, {sum(sizes)} in all (was one 687 MiB frame)",
    )


@pytest.mark.django_db(transaction=True)
def test_a_replay_past_its_budget_stops_and_points_to_the_timeline(
    supervisor,  # noqa: F811
    redis_url,
    namespace,
    figures,
):
    # rows that escape to four times their size ("<" is "&lt;"): 16 kB each becomes ~64 kB
    sid = "many-1"
    ids = publish_large(redis_url, namespace, sid, n=60, size=PAYLOAD_DISPLAY_BYTES, char="<")
    frames = _replay(supervisor, sid)
    sizes = [len(f.encode()) for f in frames]
    text = "".join(frames)
    assert max(sizes) < FRAME_BOUND and sum(sizes) < REPLAY_BOUND, (max(sizes), sum(sizes))
    assert f'data-event-id="{ids[-1]}"' in text  # the newest are the ones replayed
    assert f'data-event-id="{ids[0]}"' not in text
    assert "replay-gap" in frames[0]  # sent first, so it sits below the replayed rows
    sent = re.findall(r'data-event-id="([^"]+)"', text)
    oldest = min(sent, key=lambda i: tuple(map(int, i.split("-"))))
    assert f"?before={oldest}" in frames[0]
    figures(
        "replay past its byte budget",
        f"resume 0 on 60 events whose rows are ~{PAYLOAD_DISPLAY_BYTES} bytes before escaping",
        f"{len(sent)} newest rows in {len(frames)} frames, {sum(sizes)} bytes, then a link to the timeline",
    )


async def test_rows_held_before_the_page_resumes_are_bounded_in_bytes():
    consumer = SessionConsumer()
    consumer.resumed, consumer.buffer, consumer.buffer_bytes = False, [], 0
    row = {"id": "1-0", "type": "message", "html": "<li>" + "x" * 100_000 + "</li>"}
    for i in range(200):  # 20 MB offered while the page has not said where to resume
        await consumer.session_events({"events": [{**row, "id": f"{i + 1}-0"}]})
    assert consumer.buffer_bytes <= BUFFER_BYTES
    assert sum(len(r["html"]) for r in consumer.buffer) == consumer.buffer_bytes


@pytest.mark.browser
def test_a_large_session_in_the_browser(asgi_server, page_factory, core, sid, figures):  # noqa: F811
    for i in range(EVENTS):
        core.publish(sid, EventType.MESSAGE, {"i": i, "blob": "z" * MB})
    page = page_factory(asgi_server.url)
    response = page.goto(f"{asgi_server.url}{reverse('coordination:session', args=[sid])}")
    size = len(response.body())
    assert size < PAGE_BOUND
    wait_live(page)
    # a second socket of the page's origin asks for everything, as an attacker would
    measured = page.evaluate(
        """(path) => new Promise((resolve) => {
            const ws = new WebSocket(`ws://${location.host}${path}`);
            const sizes = [];
            let quiet;
            const done = () => { ws.close(); resolve(sizes); };
            ws.onopen = () => ws.send(JSON.stringify({resume: "0"}));
            ws.onmessage = (m) => {
                sizes.push(new Blob([m.data]).size);
                clearTimeout(quiet);
                quiet = setTimeout(done, 2000);
            };
            setTimeout(done, 30000);
        })""",
        f"/ws/session/{sid}/",
    )
    assert measured and max(measured) < FRAME_BOUND and sum(measured) < REPLAY_BOUND
    core.publish(sid, EventType.MESSAGE, {"live": "y" * MB})
    expect(page.locator("#timeline .event")).to_have_count(EVENTS + 1, timeout=15_000)
    newest = page.locator("#timeline .event").first
    expect(newest.locator(".whole-value a")).to_have_text("Show the whole value")
    href = newest.locator(".whole-value a").get_attribute("href")
    whole = page.context.request.get(f"{asgi_server.url}{href}")
    assert whole.status == 200 and "y" * MB in whole.text()
    figures(
        "a session of 20 events of 1 MB in Chromium",
        'page load, a second socket sending {"resume": "0"}, one more 1 MB event live',
        f"page {size} bytes; replay {len(measured)} frames, largest {max(measured)}, total "
        f"{sum(measured)} bytes; the live row cut, its whole value one click away",
    )


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def _login_cookies(base_url: str, username: str = "alice") -> str:
    """Sign in over plain HTTP, as a script would; returns the Cookie header."""
    import http.cookiejar
    import urllib.parse
    import urllib.request

    from ..browser.conftest import PASSWORD

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = opener.open(f"{base_url}/login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    body = urllib.parse.urlencode(
        {"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token}
    ).encode()
    request = urllib.request.Request(f"{base_url}/login/", data=body, headers={"Referer": base_url})
    opener.open(request, timeout=10).read()
    cookies = {c.name: c.value for c in jar}
    assert "sessionid" in cookies, "the sign-in failed"
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


@pytest.mark.browser  # a live server, started with the browser tests' fixtures
def test_a_client_that_never_reads_is_cut_off_not_buffered(
    asgi_server, core, sid, agent_loop, figures
):
    import socket
    import urllib.request

    from websockets.asyncio.client import connect

    from coordination.realtime.consumers import OUTBOX_BYTES

    core.publish(sid, EventType.MESSAGE, {"first": 1})
    cookie = _login_cookies(asgi_server.url)
    pid = asgi_server.process.pid

    async def open_and_never_read():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that barely reads
        sock.connect(("127.0.0.1", asgi_server.port))
        ws = await connect(
            f"ws://127.0.0.1:{asgi_server.port}/ws/session/{sid}/",
            sock=sock,
            origin=asgi_server.url,
            additional_headers={"Cookie": cookie},
            compression=None,
            max_queue=1,
            ping_interval=None,
            max_size=None,
        )
        await ws.send('{"resume": "0"}')
        # The replay of the first event proves the server handled the resume, so the flood
        # below arrives live. (Published before the resume was handled, under load, it went to
        # the bounded pre-resume buffer and the bounded replay instead: no 8 MiB ever queued,
        # no close, and the read below waited for good.) From here on the client reads nothing.
        async with asyncio.timeout(30):
            while "data-event-id" not in str(await ws.recv()):
                pass
        return ws

    ws = asyncio.run_coroutine_threadsafe(open_and_never_read(), agent_loop).result(60)
    core_url, core_ns = asgi_server.env["REDIS_URL"], asgi_server.env["COORDINATION_NAMESPACE"]
    index = SessionIndex(core_url, namespace=core_ns)

    async def cutoffs() -> int:
        return (await index.counters()).get("websocket_cutoffs", 0)

    cutoffs_before = asyncio.run_coroutine_threadsafe(cutoffs(), agent_loop).result(30)

    async def cut_off() -> bool:
        return await cutoffs() > cutoffs_before

    try:
        before = _rss_bytes(pid)
        # ~64 kB rows ("<" escapes to "&lt;"): 400 of them are ~26 MB of frames for one client
        flood = 400

        async def publish_flood():
            coord = AgentCoordinator(sid, core_url, namespace=core_ns)
            for i in range(flood):
                await coord.publish(
                    EventType.MESSAGE, {"i": i, "blob": "<" * PAYLOAD_DISPLAY_BYTES}
                )

        asyncio.run_coroutine_threadsafe(publish_flood(), agent_loop).result(120)
        # The client reads nothing until the server has given up on it. Reading earlier (while
        # the relay is still catching up, as on a loaded machine) would let frames through that
        # were never meant to wait, and "what reached the client" would measure the relay's lag.
        asyncio.run_coroutine_threadsafe(
            eventually(cut_off, "the server to cut the client off", timeout=90), agent_loop
        ).result(120)
        # /healthz answers while one client is stuck (its deadline is the bound: 10 s)
        started = time.monotonic()
        with urllib.request.urlopen(f"{asgi_server.url}/healthz", timeout=10) as health:
            assert health.status == 200
        health_seconds = time.monotonic() - started

        async def closed_code(deadline: float = 60.0):
            """Now read: what the server sent ends with its close frame."""
            received = 0
            async with asyncio.timeout(deadline):
                try:
                    async for frame in ws:
                        received += len(frame)
                except Exception:
                    pass
            return ws.close_code, received

        code, received = asyncio.run_coroutine_threadsafe(closed_code(), agent_loop).result(90)
        grown = _rss_bytes(pid) - before
    finally:
        asyncio.run_coroutine_threadsafe(ws.close(), agent_loop).result(30)
    assert code == 1013, code  # closed as "try again": the page reconnects and replays
    # What reached it was already on its way when the server gave up: the kernel's send buffer
    # (at most tcp_wmem's maximum), the transport's 64 kB high-water mark plus the frame being
    # written, and the frames the client's library had parsed before it paused reading. The
    # OUTBOX_BYTES that were waiting were dropped with the close, not sent. (Measured: ~3.4 MB
    # on an idle or a loaded 2-core machine; 4 MiB kernel maximum.)
    with open("/proc/sys/net/ipv4/tcp_wmem") as wmem:
        kernel_buffer = int(wmem.read().split()[2])
    assert received < kernel_buffer + 4 * FRAME_BOUND, received
    assert received < OUTBOX_BYTES, received
    # the relay's own batch (all 400 rows rendered at once, in this process) dominates this
    assert grown < 256 * 1024 * 1024, grown
    figures(
        "a websocket client that never reads",
        f"resume 0, then {flood} events whose rows are ~64 kB live (~26 MB of frames), the "
        "client's receive buffer 4 kB and never read",
        f"closed with 1013 after {received} bytes reached it; server RSS grew {grown // 1024} kB; "
        f"/healthz answered in {health_seconds:.2f} s",
    )


@pytest.mark.django_db
def test_api_pages_of_large_events_are_bounded_in_bytes_and_continue(
    client,
    supervisor,  # noqa: F811
    large_session,
    figures,
):
    from coordination.api.v1 import API_RESPONSE_BYTES
    from coordination.models import ApiToken

    sid, ids = large_session
    _, token = ApiToken.issue(supervisor, "size test")
    headers = {"Authorization": f"Bearer {token}"}
    seen, after, pages, largest = [], "-", 0, 0
    while after is not None:
        response = client.get(
            f"/api/v1/events/{sid}", {"after": after, "limit": 1000}, headers=headers
        )
        assert response.status_code == 200
        largest = max(largest, len(response.content))
        assert len(response.content) < API_RESPONSE_BYTES + 2 * MB
        body = response.json()
        seen += [item["id"] for item in body["items"]]
        after, pages = body["next_after"], pages + 1
    assert [i for i in seen if i in ids] == ids  # every event once, in order, across pages
    assert pages > 1
    figures(
        "JSON API events of a session of 20 events of 1 MB",
        "GET /api/v1/events/<id>?limit=1000, following next_after",
        f"{pages} pages, largest {largest} bytes; every event once",
    )
