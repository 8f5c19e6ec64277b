"""/trends/: rollups counted by the relay (exactly, once per feed entry), bounded in Redis,
drawn as SVG with every agent-written name escaped and cut, behind the login."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from asgiref.sync import async_to_sync
from redis.client import NEVER_DECODE

from coordination import AgentCoordinator, EventType, SessionIndex
from coordination.dashboard import trends
from coordination.realtime.relay import Relay

from ..waiting import eventually

pytestmark = pytest.mark.django_db


def totals(index: SessionIndex, per: str = "minute") -> dict[str, int]:
    buckets = async_to_sync(trends.read_buckets)(index, per)
    return {s: sum(b.counts[s] for b in buckets) for s in trends.SERIES}


async def raw_feed(index: SessionIndex) -> list[tuple[str, dict]]:
    reply = await index.redis.execute_command(
        "XRANGE", index.keys.feed, "-", "+", **{NEVER_DECODE: True}
    )
    return [
        (fid.decode(), dict(zip(f[::2], f[1::2], strict=False)) if isinstance(f, list) else f)
        for fid, f in reply
    ]


async def test_the_relay_counts_a_known_set_of_events_exactly_once(
    redis_url, namespace, coordination_settings
):
    coordination_settings.COORDINATION_ESCALATION_SLA = 0.05  # the default queue: 50 ms
    coordination_settings.COORDINATION_ESCALATION_SLAS = {"vip": 3600}
    index = SessionIndex(redis_url, namespace=namespace)
    relay = Relay(index, lease_ttl=5.0, flush_interval=0.05, worker_id="w-trends")
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.wait_for(relay.reading.wait(), 15)
        a = AgentCoordinator("t-1", redis_url, namespace=namespace)
        b = AgentCoordinator("t-2", redis_url, namespace=namespace)
        for n in range(3):
            await a.publish(EventType.MESSAGE, {"n": n}, source="agent-a")
        await a.escalate("refund", {"queue": "vip"}, source="agent-a")
        assert await a.take_over("human:sup")
        await a.hand_back(by="human:sup")
        await b.escalate("angry", source="agent-b")  # the default queue, 50 ms SLA
        latest = await index.latest_feed_id()

        async def counted() -> bool:
            return await index.redis.get(trends.mark_key(namespace)) == latest

        await eventually(counted, "the relay to count every event")
    finally:
        await relay.stop(task)

    expected = {"events": 7, "escalations": 2, "takeovers": 1, "handbacks": 1}
    for per in ("minute", "hour"):
        got = await asyncio.to_thread(totals, index, per)
        assert {k: got[k] for k in expected} == expected, per
        assert got["sla_breaches"] == 0  # vip was taken well within its hour

    # at-least-once delivery: the same entries again (a relay that crashed before moving its
    # cursor) are not counted twice
    assert await trends.record_entries(index, await raw_feed(index)) == 0
    assert (await asyncio.to_thread(totals, index))["events"] == 7

    takeover, by_queue = await trends.read_durations(index, "takeover", time.time() - 3600)
    assert takeover.count == 1 and [p.label for p in by_queue] == ["vip"]
    handback, by_sup = await trends.read_durations(index, "handback", time.time() - 3600)
    assert handback.count == 1 and [p.label for p in by_sup] == ["human:sup"]
    labels = await trends.read_labels(index, 24)
    assert dict(labels["agent_events"]) == {"agent-a": 4, "human:sup": 2, "agent-b": 1}
    assert dict(labels["queue_escalations"]) == {"vip": 1, "(default)": 1}
    assert dict(labels["agent_escalations"]) == {"agent-a": 1, "agent-b": 1}
    assert dict(labels["supervisor_takeovers"]) == {"human:sup": 1}

    # t-2 waits past its 50 ms SLA: the scan counts the breach once, however often it runs
    summary = await index.get_session("t-2")
    await asyncio.sleep(max(0.0, summary.escalated_at + 0.06 - time.time()))  # past the SLA
    for _ in range(3):
        await trends.scan_breaches(index)
    got = await asyncio.to_thread(totals, index)
    assert got["sla_breaches"] == 1
    assert dict((await trends.read_labels(index, 24))["queue_sla_breaches"]) == {"(default)": 1}


_feed_seq = iter(range(10**9))


def _entry(ms: int, seq: int, session: str, etype: str, data: str = "{}", src: str = "a"):
    """A raw feed entry: the feed ids rise in the order entries are made (as the feed's do)."""
    return (
        f"{int(time.time() * 1000)}-{next(_feed_seq)}",
        {
            b"s": session.encode(),
            b"e": f"{ms}-{seq}".encode(),
            b"t": etype.encode(),
            b"d": data.encode(),
            b"src": src.encode("utf-8", "surrogatepass"),
        },
    )


async def test_rollups_stay_bounded_keys_expire_and_samples_are_trimmed(
    redis_url, namespace, coordination_settings, redis_sync, monkeypatch
):
    monkeypatch.setattr(trends, "SAMPLE_CAP", 5)
    index = SessionIndex(redis_url, namespace=namespace)
    now_ms = int(time.time() * 1000)
    # an event from 9 days ago (a replay of old history) keeps nothing past its retention
    old_ms = now_ms - 9 * 24 * 3600 * 1000
    entries = [_entry(old_ms, 0, "old", "message")]
    seq = 0
    for n in range(3 * trends.LABEL_CAP):  # more agents than an hour bucket keeps by name
        entries.append(_entry(now_ms, seq, f"b-{n}", "message", src=f"agent-{n}"))
        seq += 1
    for n in range(12):  # 12 takeovers: only the newest 5 samples stay
        entries.append(_entry(now_ms, seq, f"b-{n}", "escalated", '{"queue": "q"}'))
        entries.append(
            _entry(now_ms + 1 + n, seq + 1, f"b-{n}", "human_takeover", '{"supervisor": "human:s"}')
        )
        seq += 2
    assert await trends.record_entries(index, entries) == len(entries)

    prefix = trends.key_prefix(namespace)
    keys = [k for k in redis_sync.scan_iter(match=prefix + "*", count=1000)]
    assert keys
    for key in keys:
        ttl = redis_sync.ttl(key)
        if key.endswith(":mark"):
            continue  # one short string
        assert 0 < ttl <= trends.STATE_TTL + 86400, (key, ttl)
    assert not redis_sync.exists(f"{prefix}m:{old_ms // 60000}")
    assert not redis_sync.exists(f"{prefix}h:{old_ms // 3600000}")
    assert redis_sync.zcard(prefix + "s:takeover") == 5
    hour = redis_sync.hgetall(f"{prefix}h:{now_ms // 3600000}")
    agent_fields = [f for f in hour if f.startswith("l\0agent_events\0")]
    assert len(agent_fields) == trends.LABEL_CAP + 1  # the cap, and "(other)"
    # agents past the cap, and agent "a" of the 24 escalations and takeovers, came later
    assert int(hour["l\0agent_events\0(other)"]) == 2 * trends.LABEL_CAP + 24
    labels = await trends.read_labels(index, 24)
    assert sum(c for _, c in labels["agent_events"]) == 3 * trends.LABEL_CAP + 24


def test_hostile_names_are_escaped_and_cut_in_the_svg(client, supervisor, redis_url, namespace):
    index = SessionIndex(redis_url, namespace=namespace)
    now_ms = int(time.time() * 1000)
    evil = '<script>alert(1)</script>"\u202e\ufeff' + "Ẅ" * 5000
    entries = [
        _entry(
            now_ms,
            0,
            "h-1",
            "escalated",
            json.dumps({"queue": evil}),
            src="\ud800<img src=x onerror=alert(2)>" + "x" * 100_000,
        ),
        _entry(now_ms, 1, "h-1", "human_takeover", '{"supervisor": "<b>boss</b>\\ud800"}'),
    ]
    async_to_sync(trends.record_entries)(index, entries)
    client.force_login(supervisor)
    body = client.get("/trends/").content.decode()
    assert "<script>alert(1)" not in body and "<img src=x" not in body and "<b>boss" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "&lt;img src=x onerror=alert(2)&gt;" in body
    assert "\ud800" not in body
    svg = re.findall(r"<svg.*?</svg>", body, re.S)
    assert svg and all("<script" not in s for s in svg)
    # names are cut to LABEL_CHARS wherever they appear
    assert "Ẅ" * trends.LABEL_CHARS not in body
    assert "x" * trends.LABEL_CHARS not in body
    assert len(body) < 1_000_000


def test_trends_page_requires_login_and_htmx_gets_the_body(client, supervisor, viewer):
    response = client.get("/trends/")
    assert response.status_code == 302 and "/login" in response["Location"]
    client.force_login(viewer)
    page = client.get("/trends/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'aria-current="page">Trends' in html or 'aria-current="page"' in html
    assert 'href="/trends/"' in html and 'hx-get="/trends/"' in html
    assert "<title id=" in html and 'role="img"' in html
    part = client.get("/trends/", headers={"HX-Request": "true"}).content.decode()
    assert part.lstrip().startswith('<div id="trends"') and "<html" not in part
