"""The sessions notice fan-out (issue 18, the live path): every open overview or sessions list
in a process shares one read and one render of a notice; what differs between pages (may the
viewer intervene, the page's CSRF token) still differs, escaped; a page is sent only the
overview parts that changed since its socket last sent them. The load itself is measured by
``benchmarks/fanout.py`` (``make bench``), not here."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.template.loader import render_to_string
from django.utils.html import escape

from coordination import AgentCoordinator, EventType
from coordination.dashboard.fragments import overview_context, render_overview_live
from coordination.foundation.core_clients import session_index
from coordination.realtime import consumers
from coordination.realtime.groups import SESSIONS_GROUP
from coordination.realtime.routing import websocket_urlpatterns
from coordination.templatetags.coordination_tags import reltime

# transactional: the consumer's database_sync_to_async closes the connection it finds (see
# tests/web/test_interventions.py)
pytestmark = pytest.mark.django_db(transaction=True)

TOKEN_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]*)"')
RUN = uuid.uuid4().hex  # notice names are unique per relay run
HOSTILE_TOKEN = '"><script>alert(1)</script><input value="'


@pytest.fixture
def coord(redis_url, namespace):
    def make(session_id):
        return AgentCoordinator(session_id, redis_url, namespace=namespace)

    return make


async def notice(key: str, ids: list[str]) -> None:
    await get_channel_layer().group_send(
        SESSIONS_GROUP, {"type": "sessions.changed", "ids": ids, "notice": key}
    )


async def page(user, query: str, csrf: str | None = None) -> WebsocketCommunicator:
    socket = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/sessions/?{query}")
    socket.scope["user"] = user
    if csrf is not None:
        socket.scope["cookies"] = {"csrftoken": csrf}
    connected, _ = await socket.connect()
    assert connected
    return socket


def test_overview_parts_are_the_overview_live_push(coord, supervisor):
    """The consumer sends the partials of render_overview_live one by one: the same markup."""
    async_to_sync(coord("waiting-1").escalate)("a person, please")
    context = {
        **async_to_sync(overview_context)(session_index()),
        "can_intervene": True,
        "csrf_token": "t" * 32,
    }
    parts = [render_to_string(p, {**context, "oob": True}) for p in consumers.OVERVIEW_PARTS]
    assert "".join(parts) == render_overview_live(context)
    assert "waiting-1" in parts[1] and 'value="' + "t" * 32 in parts[1]


def test_overview_pages_share_one_read_and_keep_their_own_token(
    coord, supervisor, viewer, monkeypatch
):
    async_to_sync(coord("waiting-1").escalate)("<b>agent-written</b> reason")
    reads = []
    real = consumers.overview_context

    async def counted(index):
        reads.append(1)
        return await real(index)

    monkeypatch.setattr(consumers, "overview_context", counted)
    tokens = ["a" * 32, "b" * 32, HOSTILE_TOKEN]

    async def scenario():
        supervisors = [await page(supervisor, "view=overview", t) for t in tokens]
        viewers = [await page(viewer, "view=overview", "c" * 32) for _ in range(2)]
        try:
            await notice(f"{RUN}:1:1", ["waiting-1"])
            frames = [await p.receive_from(timeout=10) for p in supervisors + viewers]
        finally:
            for p in supervisors + viewers:
                await p.disconnect()
        return frames

    frames = async_to_sync(scenario)()
    assert len(reads) == 1  # five pages, one read of the overview's data
    for frame, token in zip(frames, tokens, strict=False):
        # the supervisor's queue has the claim form, with this page's token, escaped
        assert set(TOKEN_FIELD.findall(frame)) == {escape(token)}
    assert "<script>alert(1)" not in frames[2]
    # the same markup but for the token; the viewers' has no form at all
    assert frames[0].replace("a" * 32, "T") == frames[1].replace("b" * 32, "T")
    assert frames[3] == frames[4] and "csrfmiddlewaretoken" not in frames[3]
    assert "waiting-1" in frames[3] and "&lt;b&gt;agent-written&lt;/b&gt;" in frames[3]
    assert not any(consumers.CSRF_MARK in f for f in frames)


def test_an_overview_page_is_sent_only_the_parts_that_changed(coord, supervisor):
    async_to_sync(coord("waiting-1").escalate)("first")

    async def scenario():
        overview = await page(supervisor, "view=overview", "a" * 32)
        try:
            await notice(f"{RUN}:2:1", ["waiting-1"])
            first = await overview.receive_from(timeout=10)
            await notice(f"{RUN}:2:1", ["waiting-1"])  # the same notice again: no change
            await coord("waiting-2").escalate("second")
            await notice(f"{RUN}:2:2", ["waiting-2"])
            second = await overview.receive_from(timeout=10)
            await overview.send_json_to({"resume": "0-0"})  # a reconnected page: everything
            resumed = await overview.receive_from(timeout=10)
        finally:
            await overview.disconnect()
        return first, second, resumed

    first, second, resumed = async_to_sync(scenario)()
    parts = (
        "overview-stats",
        "escalation-queue",
        "agents-online",
        "pending-approvals",
        "pickup-queue",
    )
    assert all(f'id="{p}"' in first for p in parts)
    # the next frame is the second notice's (the repeated one sent nothing): the queue and the
    # counts changed, the (empty) agents list did not and is not sent again
    assert "waiting-2" in second and 'id="overview-stats"' in second
    assert 'id="agents-online"' not in second and 'id="pickup-queue"' not in second
    assert all(f'id="{p}"' in resumed for p in parts) and "waiting-2" in resumed


def test_list_pages_share_rows_but_not_the_supervisors_checkboxes(coord, supervisor, viewer):
    async_to_sync(coord("s-1").publish)(EventType.MESSAGE, {"text": "<img src=x onerror=alert(1)>"})

    async def scenario():
        pages = [
            await page(supervisor, "view=list&first=1"),
            await page(viewer, "view=list&first=1"),
            await page(supervisor, "view=list&first=1"),
        ]
        try:
            await notice(f"{RUN}:3:1", ["s-1"])
            return [await p.receive_from(timeout=10) for p in pages]
        finally:
            for p in pages:
                await p.disconnect()

    mine, theirs, again = async_to_sync(scenario)()
    assert 'data-session-id="s-1"' in mine and 'data-session-id="s-1"' in theirs
    assert "data-bulk-select" in mine and "data-bulk-select" not in theirs
    assert again == mine
    assert "<img src=x" not in mine + theirs


def test_a_notice_without_a_name_is_not_shared(coord, supervisor):
    """Notices from a relay that does not name them (the same ids twice are two notices)."""
    async_to_sync(coord("s-1").publish)(EventType.MESSAGE, {})

    async def scenario():
        listing = await page(supervisor, "view=list&first=1")
        try:
            for _ in range(2):
                await get_channel_layer().group_send(
                    SESSIONS_GROUP, {"type": "sessions.changed", "ids": ["s-1"]}
                )
            frames = [await listing.receive_from(timeout=10) for _ in range(3)]
        finally:
            await listing.disconnect()
        return frames

    on_top, deleted, on_top_again = async_to_sync(scenario)()
    assert 'data-session-id="s-1"' in on_top and 'data-session-id="s-1"' in on_top_again
    assert 'hx-swap-oob="delete"' in deleted


def test_pages_of_a_process_share_one_member_of_the_sessions_group(coord, supervisor, viewer):
    """One hub per process receives each notice once and hands it to every page; when the
    last page closes it leaves the group."""
    async_to_sync(coord("s-1").publish)(EventType.MESSAGE, {})

    async def scenario():
        loop = asyncio.get_running_loop()

        def hubs():
            return [h for key, h in consumers.NoticeHub._hubs.items() if key[0] is loop]

        pages = [await page(supervisor, "view=overview"), await page(viewer, "view=list&first=1")]
        assert len(hubs()) == 1 and len(hubs()[0].pages) == 2
        hub = hubs()[0]
        layer = get_channel_layer()._get_layer()
        group = layer._get_group_channel_name(SESSIONS_GROUP)
        assert len(layer.groups[group]) == 1  # the hub, not one member per page
        await notice(f"{RUN}:4:1", ["s-1"])
        assert 'id="overview-stats"' in await pages[0].receive_from(timeout=10)
        assert 'data-session-id="s-1"' in await pages[1].receive_from(timeout=10)
        for p in pages:
            await p.disconnect()
        with contextlib.suppress(asyncio.CancelledError):
            await hub.task
        assert hubs() == [] and not layer.groups.get(group)

    async_to_sync(scenario)()


def test_sockets_of_a_process_share_one_redis_watch(supervisor, viewer):
    async def scenario():
        loop = asyncio.get_running_loop()

        def watches():
            return [w for key, w in consumers.RedisWatch._watches.items() if key[0] is loop]

        pages = [await page(supervisor, "view=overview"), await page(viewer, "view=list")]
        assert len(watches()) == 1
        watch = watches()[0]
        assert len(watch.sockets) == 2
        await pages[0].disconnect()
        assert len(watch.sockets) == 1 and not watch.task.done()
        await pages[1].disconnect()
        assert not watch.sockets and watches() == []
        with contextlib.suppress(asyncio.CancelledError):
            await watch.task
        assert watch.task.cancelled()

    async_to_sync(scenario)()


def test_only_labels_the_page_keeps_current_are_left_out_of_the_comparison():
    """A part whose "12s ago" / "4m left" labels alone changed is not sent again (app.js
    redraws them every second from data-ts / data-sla-clock); any other change is."""
    stamp = reltime(1_700_000_000.0)
    label = re.search(r">([^<]*)</time>", stamp).group(1)
    clock = '<span class="sla-clock" data-sla-clock="1700000100000">{}</span>'
    row = '<td>{} · {} <span class="tag tag-warn" data-sla-deadline="1"{}>over SLA</span> {}</td>'
    # agent-written text is escaped: a look-alike <time> from an agent is compared as it is
    agent = escape('<time data-ts="1">{}</time>')
    before = row.format(stamp, clock.format("4m left"), " hidden", agent.format("a"))
    later = row.format(
        stamp.replace(f">{label}<", ">9h 1m<"),
        clock.format("3m left"),
        " hidden",
        agent.format("a"),
    )
    assert consumers.steady_text(before) == consumers.steady_text(later)
    over = later.replace(" hidden", "")
    assert consumers.steady_text(over) != consumers.steady_text(before)
    agent_edit = later.replace(agent.format("a"), agent.format("b"))
    assert consumers.steady_text(agent_edit) != consumers.steady_text(before)
