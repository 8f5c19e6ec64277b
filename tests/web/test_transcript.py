"""The session page's transcript: customer, agent and human turns as text, cards for notes,
tools and approvals, the escalation reason and holder above it, agent text escaped, and the
live push redrawing it from the same partial. Real Redis (single server and Cluster)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from coordination import AgentCoordinator, AtomicOperations, EventType, SessionIndex
from coordination.core import Event
from coordination.dashboard.transcript import TRANSCRIPT_EVENTS, turn
from coordination.realtime.relay import Relay
from coordination.realtime.routing import websocket_urlpatterns

pytestmark = pytest.mark.django_db(transaction=True)

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'


def panel(page: str) -> str:
    start = page.index('id="session-transcript"')
    return page[start : page.index("</section>", start)]


async def _page(user, sid: str) -> str:
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get(f"/sessions/{sid}/")
    assert response.status_code == 200
    return response.content.decode()


async def test_the_page_leads_with_the_conversation(redis_url, namespace, supervisor):
    sid = "s-transcript"
    coord = AgentCoordinator(sid, redis_url, namespace=namespace)
    await coord.publish(EventType.MESSAGE, {"role": "customer", "text": "I was charged twice"})
    await coord.update_state({"issue_status": "triage"}, by="triage")  # left out of it
    await coord.publish(
        EventType.MESSAGE, {"role": "agent", "text": "Let me check.\nOne moment"}, source="bot"
    )
    await coord.publish(EventType.TOOL_RESULT, {"tool": "lookup_invoice", "result": {"n": 2}})
    await coord.escalate("refund over the limit", source="bot")
    await coord.take_over("human:sup")
    await coord.publish(
        EventType.MESSAGE,
        {"role": "human", "from": "human:sup", "text": "Refund approved"},
        source="human:sup",
    )
    await coord.publish(EventType.NOTE, {"by": "human:sup", "text": "contract checked"})
    await coord.hand_back(None, by="human:sup", resolution="refund approved")

    page = await _page(supervisor, sid)
    # the transcript comes before the raw timeline, which stays one click away
    assert page.index('id="session-transcript"') < page.index('id="timeline"')
    assert 'href="#raw-events"' in page and "data-timeline-filter" in page
    body = panel(page)
    roles = [chunk.split('"', 1)[0] for chunk in body.split('data-role="')[1:]]
    assert roles == ["customer", "agent", "human"]
    assert "I was charged twice" in body and "Let me check.<br>One moment" in body
    assert "Refund approved" in body and "contract checked" in body
    assert "lookup_invoice" in body and "Escalated by bot: refund over the limit" in body
    assert "handed the session back to the queue. Resolution: refund approved" in body
    assert "issue_status" not in body
    assert "Nobody holds this session (waiting)" in body


async def test_the_escalation_reason_and_holder_are_above_the_turns(
    redis_url, namespace, supervisor
):
    sid = "s-transcript-esc"
    await AtomicOperations(redis_url, namespace=namespace).claim_handoff(sid, "billing_bot")
    coord = AgentCoordinator(sid, redis_url, namespace=namespace)
    await coord.publish(EventType.MESSAGE, {"role": "customer", "text": "help"})
    await coord.escalate("angry customer", source="billing_bot")
    body = panel(await _page(supervisor, sid))
    assert "Held by <strong>billing_bot</strong>" in body
    assert body.index("<strong>Escalated:</strong> angry customer") < body.index('data-role="')


async def test_agent_text_is_escaped_and_bounded(redis_url, namespace, viewer):
    sid = "s-transcript-hostile"
    coord = AgentCoordinator(sid, redis_url, namespace=namespace)
    await coord.publish(
        EventType.MESSAGE, {"role": HOSTILE, "text": HOSTILE * 500, "from": HOSTILE}
    )
    await coord.publish(EventType.NOTE, {"by": HOSTILE, "text": HOSTILE})
    await coord.publish(EventType.TOOL_RESULT, {"tool": HOSTILE, "result": [HOSTILE] * 500})
    body = panel(await _page(viewer, sid))
    assert "<script>" not in body and "<img" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert len(body) < 40_000  # 500 copies of the text and the tool result were cut


async def test_a_long_session_shows_only_its_newest_events(redis_url, namespace, viewer):
    sid = "s-transcript-long"
    coord = AgentCoordinator(sid, redis_url, namespace=namespace)
    for n in range(TRANSCRIPT_EVENTS + 5):
        await coord.publish(EventType.MESSAGE, {"role": "customer", "text": f"line {n}."})
    body = panel(await _page(viewer, sid))
    assert "line 4." not in body and "line 5." in body and f"line {TRANSCRIPT_EVENTS + 4}." in body
    assert "Only the newest events are shown here" in body


async def test_the_transcript_is_redrawn_live(redis_url, namespace, supervisor):
    sid = f"s-live-{uuid.uuid4().hex[:6]}"
    coord = AgentCoordinator(sid, redis_url, namespace=namespace)
    await coord.publish(EventType.MESSAGE, {"role": "customer", "text": "first"})
    relay = Relay(
        SessionIndex(redis_url, namespace=namespace),
        lease_ttl=1.0,
        flush_interval=0.05,
        worker_id=f"test-{uuid.uuid4().hex[:6]}",
    )
    task = asyncio.create_task(relay.run())
    page = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/session/{sid}/")
    page.scope["user"] = supervisor
    try:
        async with asyncio.timeout(15):
            await relay.reading.wait()
        connected, _ = await page.connect()
        assert connected
        await page.send_json_to({"resume": "0"})
        await coord.publish(
            EventType.MESSAGE, {"role": "human", "from": "human:sup", "text": "live <reply>"}
        )
        async with asyncio.timeout(15):  # other live frames (rows, header) may come first
            while True:
                frame = await page.receive_from(timeout=15)
                if 'id="session-transcript"' in frame and "live &lt;reply&gt;" in frame:
                    break
        assert 'hx-swap-oob="true"' in frame
        assert frame.index('data-role="customer"') < frame.index('data-role="human"')
    finally:
        await page.disconnect()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_cards_read_any_shape_of_data():
    """Agents (and anyone with Redis access) write these fields: any shape gives a card."""
    decided = Event(
        id="1-0",
        type=EventType.APPROVAL_DECIDED,
        data={"approved": "yes", "by": {"x": HOSTILE}, "message": 5, "action": ["x"]},
        session_id="s",
        timestamp=1.0,
        source=None,
    )
    card = turn(decided)
    assert card["approved"] is False  # only a real true approves
    assert card["who"].startswith("(invalid:") and card["text"] == "5"
    requested = Event(
        id="2-0",
        type=EventType.APPROVAL_REQUESTED,
        data={"action": "refund", "args": {"amount": 2400}, "reason": "over the limit"},
        session_id="s",
        timestamp=2.0,
        source="billing_bot",
    )
    card = turn(requested)
    assert (card["title"], card["text"], card["who"]) == (
        "refund",
        '{"amount": 2400}',
        "billing_bot",
    )
