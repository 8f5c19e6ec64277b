"""What an open overview or sessions list keeps alive between two notices (issue 18: 1,000 open
pages, /healthz p99 under 100 ms). Every object a socket holds is walked by each full garbage
collection, and an object made per socket and notice that lives until the next notice is
promoted to generation 2 and brings the next full collection closer. The load itself is
measured by ``benchmarks/fanout.py``; these pin down the two things it found."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from coordination import AgentCoordinator, EventType
from tests.waiting import eventually
from tests.web.test_fanout import notice, page

pytestmark = pytest.mark.django_db(transaction=True)

RUN = uuid.uuid4().hex


@pytest.fixture
def session(redis_url, namespace):
    coord = AgentCoordinator("s-1", redis_url, namespace=namespace)
    async_to_sync(coord.publish)(EventType.MESSAGE, {})
    return coord


def _writers() -> list[asyncio.Task]:
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "").endswith("_write_outbox")
    ]


def test_overview_and_list_pages_subscribe_no_channel_of_their_own(session, supervisor, viewer):
    """The process's hub receives the notices; a page subscribing a channel of its own cost a
    Redis SUBSCRIBE, a queue and a waiting receive per socket, for messages it never got."""

    async def scenario():
        layer = get_channel_layer()._get_layer()
        before = set(layer.channels)
        pages = [
            await page(supervisor, "view=overview"),
            await page(viewer, "view=overview"),
            await page(viewer, "view=list&first=1"),
        ]
        try:
            added = set(layer.channels) - before
            await notice(f"{RUN}:1:1", ["s-1"])
            frames = [await p.receive_from(timeout=10) for p in pages]
        finally:
            for p in pages:
                await p.disconnect()
        return added, frames

    added, frames = async_to_sync(scenario)()
    # the hub's one channel at most (none if another test's hub of this loop is still there)
    assert len(added) <= 1 and all("sessions-hub." in name for name in added), added
    assert 'id="overview-stats"' in frames[0] and 'id="overview-stats"' in frames[1]
    assert 'data-session-id="s-1"' in frames[2]


def test_nothing_of_a_socket_waits_between_notices(redis_url, namespace, supervisor, viewer):
    """Once a page's frame is handed to the server, no task of its socket is left waiting for
    the next one (a writer that waited held a fresh future per socket and notice); the next
    notice starts a writer again and the page gets its frame."""

    async def scenario():
        pages = [await page(supervisor, "view=overview"), await page(viewer, "view=overview")]
        try:
            for n in range(3):
                # a new escalation changes the overview's queue: every page is sent a frame
                await AgentCoordinator(f"q-{n}", redis_url, namespace=namespace).escalate("help")
                await notice(f"{RUN}:2:{n}", [f"q-{n}"])
                for p in pages:
                    assert f"q-{n}" in await p.receive_from(timeout=10)
                await eventually(lambda: not _writers(), "the sockets' writers to end", timeout=5)
        finally:
            for p in pages:
                await p.disconnect()

    async_to_sync(scenario)()
