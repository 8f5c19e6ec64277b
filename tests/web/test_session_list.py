"""The sessions list: sortable columns, the mine / unassigned / waiting-for-pickup views, search
inside event text (bounded, and said so), and hostile parameters (a 400 or ignored, never 500)."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from coordination import AgentCoordinator, AtomicOperations, EventType
from coordination.dashboard import session_list, views
from coordination.dashboard.fragments import dom_id
from coordination.realtime.groups import SESSIONS_GROUP
from coordination.realtime.routing import websocket_urlpatterns

pytestmark = pytest.mark.django_db

ROW = re.compile(r'<tr id="session-[0-9a-f]+" data-session-id="([^"]*)"')


@pytest.fixture
def coord(redis_url, namespace):
    def make(session_id):
        return AgentCoordinator(session_id, redis_url, namespace=namespace)

    return make


@pytest.fixture
def logged_in(client, supervisor):
    client.force_login(supervisor)
    return client


def ids(client, url):
    response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    return ROW.findall(response.content.decode())


def next_link(body: str) -> str | None:
    if 'rel="next"' not in body:
        return None
    return body.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")


def test_columns_sort_on_the_server_and_pages_follow_the_order(logged_in, coord, monkeypatch):
    for name in ("c-2", "a-1", "b-3", "d-0", "e-9"):
        async_to_sync(coord(name).publish)(EventType.MESSAGE, {})
    async_to_sync(coord("b-3").escalate)("help")
    assert ids(logged_in, "/sessions/?sort=session") == ["a-1", "b-3", "c-2", "d-0", "e-9"]
    assert ids(logged_in, "/sessions/?sort=-session") == ["e-9", "d-0", "c-2", "b-3", "a-1"]
    assert ids(logged_in, "/sessions/?sort=status")[0] == "b-3"  # escalated first
    assert ids(logged_in, "/sessions/?sort=-status")[-1] == "b-3"
    newest_first = ids(logged_in, "/sessions/")
    assert newest_first[0] == "b-3"
    assert ids(logged_in, "/sessions/?sort=activity") == list(reversed(newest_first))

    # the header links sort (href and hx-get alike) and say which column is sorted, which way
    body = logged_in.get("/sessions/?sort=session").content.decode()
    assert 'aria-sort="ascending"' in body
    assert 'href="/sessions/?sort=-session"' in body and 'hx-get="/sessions/?sort=-session"' in body

    # pages continue in the chosen order, nothing twice, nothing skipped
    monkeypatch.setattr(views, "SESSIONS_PAGE", 2)
    seen, url = [], "/sessions/?sort=-session"
    while url:
        body = logged_in.get(url).content.decode()
        seen += ROW.findall(body)
        url = next_link(body)
    assert seen == ["e-9", "d-0", "c-2", "b-3", "a-1"]
    seen, url = [], "/sessions/?sort=status"
    while url:
        body = logged_in.get(url).content.decode()
        seen += ROW.findall(body)
        url = next_link(body)
    assert sorted(seen) == ["a-1", "b-3", "c-2", "d-0", "e-9"] and seen[0] == "b-3"


def test_mine_unassigned_and_waiting_for_pickup(logged_in, coord, redis_url, namespace):
    for name in ("mine-1", "theirs", "free", "held", "done", "released"):
        async_to_sync(coord(name).publish)(EventType.MESSAGE, {})
    assert async_to_sync(coord("mine-1").take_over)("human:sup")  # sup is the logged-in user
    assert async_to_sync(coord("theirs").take_over)("human:someone-else")
    atomic = AtomicOperations(redis_url, namespace=namespace)
    async_to_sync(atomic.claim_handoff)("held", "billing")
    async_to_sync(atomic.claim_handoff)("released", "billing")
    async_to_sync(atomic.release_handoff)("released", "billing")  # back to waiting
    async_to_sync(coord("done").close)()

    assert ids(logged_in, "/sessions/?show=mine") == ["mine-1"]
    # "mine" is the logged-in user's, whatever owner the query names
    assert ids(logged_in, "/sessions/?show=mine&agent=human:someone-else") == ["mine-1"]
    assert sorted(ids(logged_in, "/sessions/?show=unassigned")) == ["free", "released"]
    assert ids(logged_in, "/sessions/?show=pickup") == ["released"]
    assert ids(logged_in, "/sessions/?show=pickup&status=closed") == []
    body = logged_in.get("/sessions/?show=pickup").content.decode()
    assert 'aria-current="page">Waiting for pickup' in body
    # the live socket stays the list's (its own "view" parameter is not overridden) and
    # carries the view, so live rows are filtered like the page
    socket = re.search(r'ws-connect="([^"]*)"', body).group(1).replace("&amp;", "&")
    assert socket.count("view=") == 1 and "view=list" in socket and "show=pickup" in socket
    assert 'href="/sessions/?show=mine"' in body and 'hx-get="/sessions/?show=mine"' in body


def test_search_inside_event_text_is_case_insensitive_and_bounded(logged_in, coord, monkeypatch):
    async_to_sync(coord("s-refund").publish)(EventType.MESSAGE, {"text": "I want a REFUND ünïcode"})
    async_to_sync(coord("s-other").publish)(EventType.MESSAGE, {"text": "hello"})
    old = coord("s-old-match")
    async_to_sync(old.publish)(EventType.MESSAGE, {"text": "refund long ago"})
    for n in range(session_list.SEARCH_EVENTS):  # pushes the match out of the searched window
        async_to_sync(old.publish)(EventType.NOTE, {"n": n})

    assert ids(logged_in, "/sessions/?text=refund") == ["s-refund"]
    assert ids(logged_in, "/sessions/?text=%C3%9CN%C3%8FCODE") == ["s-refund"]  # "ÜNÏCODE"
    assert ids(logged_in, "/sessions/?text=note") == ["s-old-match"]  # the event type too
    assert ids(logged_in, "/sessions/?text=.*") == []  # a plain substring, not a pattern
    body = logged_in.get("/sessions/?text=refund").content.decode()
    assert f"last {session_list.SEARCH_EVENTS} events" in body
    assert "looked through 3 sessions" in body

    # the walk stops at its limit and says so; the next page goes on from there
    monkeypatch.setattr(session_list, "SEARCH_SCAN_LIMIT", 1)
    first = logged_in.get("/sessions/?text=refund&sort=session").content.decode()
    assert ROW.findall(first) == [] and "the next page looks further" in first
    seen, url = [], next_link(first)
    while url:
        body = logged_in.get(url).content.decode()
        seen += ROW.findall(body)
        url = next_link(body)
    assert seen == ["s-refund"]


@pytest.mark.parametrize(
    "query",
    [
        "sort=%27%3B%20DROP%20TABLE%20sessions%3B--",
        "sort=" + "x" * 100_000,
        "sort=session%00",
        "show=all%27%20OR%201%3D1",
        "show=%ED%A0%80",
        "text=" + "a" * 10_000,
        "sort=session&cursor=" + "%5B" * 5000,
        "sort=session&cursor=%5B%22session%22%2C5%5D",  # ["session",5]: not a name
        "sort=activity&cursor=%5B%22-activity%22%2C0%2C1%2C%22x%22%5D",  # another order's
        "sort=activity&cursor=%5B%22activity%22%2C0%2C%22NaN%22%2C%22x%22%5D",
        "sort=activity&cursor=%5B%22activity%22%2C99%2C1%2C%22x%22%5D",  # no such set
        "show=mine&sort=status&cursor=%5B%22status%22%2Ctrue%5D",
    ],
)
def test_hostile_parameters_are_a_400_with_a_message(logged_in, coord, query):
    async_to_sync(coord("s-1").publish)(EventType.MESSAGE, {})
    response = logged_in.get(f"/sessions/?{query}")
    assert response.status_code == 400
    assert response.content.startswith(b"Bad sessions query:")
    assert len(response.content) < 500


@pytest.mark.parametrize(
    ("query", "listed"),
    [
        ("text=%ED%A0%80", False),  # a lone surrogate's UTF-8 bytes: searched as U+FFFD
        ("text=%5C%28%28%28%5B%5D%2A%2B%3F%7B1000000%7D", False),  # regex-ish junk, literally
        ("text=%27%20OR%201%3D1%20--", False),
        ("text=%00%01%02", True),  # control characters only: no search at all
        ("q=%ED%A0%80&sort=session", False),
        ("agent=%F0%9F%98%80&sort=status&text=x", False),
        ("status=bogus&sort=-status", True),  # an unknown status is ignored, as before
        ("text=%3Cscript%3Ealert(1)%3C%2Fscript%3E", False),  # shown back escaped
    ],
)
def test_odd_but_harmless_parameters_are_ignored_or_matched_literally(
    logged_in, coord, query, listed
):
    async_to_sync(coord("s-1").publish)(EventType.MESSAGE, {"text": "plain"})
    response = logged_in.get(f"/sessions/?{query}")
    assert response.status_code == 200
    assert ("s-1" in ROW.findall(response.content.decode())) is listed
    assert "<script>alert(1)" not in response.content.decode()


# transactional: the consumer's database_sync_to_async closes the connection it finds (see
# tests/web/test_interventions.py)
@pytest.mark.django_db(transaction=True)
def test_live_pushes_touch_only_rows_the_page_shows(supervisor, coord):
    for name in ("a-1", "b-2"):
        async_to_sync(coord(name).publish)(EventType.MESSAGE, {})
    shown = dom_id("a-1").removeprefix("session-")

    async def changed(ids):
        await get_channel_layer().group_send(
            SESSIONS_GROUP, {"type": "sessions.changed", "ids": ids}
        )

    async def connect(query):
        socket = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/sessions/?{query}")
        socket.scope["user"] = supervisor
        connected, _ = await socket.connect()
        assert connected
        return socket

    async def scenario():
        # a page sorted by id, showing a-1 only: b-2's change is not pushed (the page has no
        # row to swap: htmx:oobErrorNoTarget), a-1's is redrawn in place
        page = await connect(f"view=list&sort=session&rows={shown}")
        try:
            await changed(["b-2"])
            await changed(["a-1"])
            frame = await page.receive_from(timeout=10)
            assert 'data-session-id="a-1"' in frame and 'hx-swap-oob="true"' in frame
            assert "b-2" not in frame
        finally:
            await page.disconnect()
        # the newest-first page: rows go on top; only a row it shows is deleted first
        page = await connect(f"view=list&first=1&rows={shown}")
        try:
            await changed(["b-2"])
            frame = await page.receive_from(timeout=10)
            assert frame.startswith('<tbody hx-swap-oob="afterbegin:#session-rows">')
            assert 'data-session-id="b-2"' in frame
            await changed(["a-1"])
            deleted = await page.receive_from(timeout=10)
            assert deleted == f'<tr id="{dom_id("a-1")}" hx-swap-oob="delete"></tr>'
            assert 'data-session-id="a-1"' in await page.receive_from(timeout=10)
            await changed(["b-2"])  # on the page now (pushed on top): deleted before it moves
            assert dom_id("b-2") in await page.receive_from(timeout=10)
        finally:
            await page.disconnect()

    async_to_sync(scenario)()
