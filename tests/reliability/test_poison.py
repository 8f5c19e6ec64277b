"""Poisoned values, as an agent holding REDIS_URL would write them: through the core and
straight into Redis (raw XADD / HSET / ZADD in the test's namespace). Every page, the JSON API
and /metrics must answer without a 5xx, in valid UTF-8, showing the value escaped; a row looks
the same pushed live and after a reload."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from asgiref.sync import async_to_sync
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.urls import reverse
from django.utils.html import escape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from playwright.sync_api import expect

from coordination import AgentCoordinator, EventType, SessionIndex
from coordination.core.events import event_from_fields
from coordination.core.keys import Keyspace
from coordination.dashboard.fragments import event_item
from coordination.models import ApiToken
from coordination.realtime.routing import websocket_urlpatterns

from ..browser.conftest import (  # noqa: F401  (live_database: server_env needs it)
    live_database,
    page_factory,
    wait_live,
)
from ..web.conftest import coordination_settings, supervisor  # noqa: F401

LONE = "\ud800"
# capabilities an agent_ready or a raw presence record may carry
BAD_CAPABILITIES = {
    "int": 5,
    "bool": True,
    "ints": [1, 2],
    "nested": [{"a": {"b": [1, {"c": None}]}}],
    "huge": list(range(20_000)),
    "string": "refunds",
    "object": {"x": 1},
    "surrogate": [LONE, "ok" + LONE],
    "markup": ["<img src=x onerror=alert(1)>"],
}
BAD_LOADS = ["high", [1, 2], {"cpu": LONE}, True, 1e300]
# raw presence records (HSET agents <id> <record>) that are not what the core writes
RAW_RECORDS = {
    "not-json": "{capabilities: 5",
    "number": "5",
    "list": '["a", "b"]',
    "caps-int": '{"capabilities": 5, "load": "x"}',
    "caps-deep": '{"capabilities": [1, {"a": [[[[]]]]}], "load": {"deep": [1]}}',
    "surrogate": '{"capabilities": ["\\ud800"], "load": "\\udfff"}',
    "deep": "[" * 5000 + "]" * 5000,
    "big": json.dumps({"capabilities": ["x" * 100_000]}),
}
# raw stream entries (XADD <session>:events) that are not what the core writes
RAW_PAYLOADS = {
    "not-json": "{not json",
    "list": "[1, 2]",
    "number": "5",
    "string": '"just text"',
    "null": "null",
    "deep": "[" * 5000 + "]" * 5000,
    "surrogate": '{"k\\ud800": "v\\udfff", "nested": ["\\udbff"]}',
    "empty": "",
}
MARKUP = "<script>alert(1)</script>"


def run(coro_factory):
    return async_to_sync(coro_factory)()


def coord(redis_url: str, namespace: str, sid: str) -> AgentCoordinator:
    return AgentCoordinator(sid, redis_url, namespace=namespace)


@pytest.fixture
def staff(supervisor):  # noqa: F811
    supervisor.is_staff = True  # /metrics needs a staff login
    supervisor.save()
    return supervisor


@pytest.fixture
def browse(client, staff):
    client.force_login(staff)
    _, token = ApiToken.issue(staff, "poison test")

    def get(url: str, *, api: bool = False):
        headers = {"Authorization": f"Bearer {token}"} if api else {}
        return client.get(url, headers=headers)

    return get


def page_urls(session_ids: list[str]) -> list[tuple[str, bool]]:
    urls = [
        ("/", False),
        ("/sessions/", False),
        ("/sessions/?status=escalated", False),
        ("/agents/", False),
        ("/metrics", False),
        ("/api/v1/agents/", True),
        ("/api/v1/sessions/", True),
        ("/api/v1/escalations/", True),
    ]
    for sid in session_ids:
        urls += [
            (reverse("coordination:session", args=[sid]), False),
            (reverse("coordination:timeline", args=[sid]), False),
            (f"/api/v1/sessions/{sid}", True),
            (f"/api/v1/events/{sid}", True),
        ]
    return urls


def walk(get, session_ids: list[str]) -> dict[str, str]:
    """GET every page and endpoint: none may answer 5xx, every body must be valid UTF-8."""
    bodies = {}
    for url, api in page_urls(session_ids):
        response = get(url, api=api)
        assert response.status_code < 500, (url, response.status_code)
        body = response.content.decode("utf-8")  # strict: no lone surrogate got through
        assert LONE not in body
        if url.startswith("/api/"):
            json.loads(body)
        else:
            assert MARKUP not in body and "<img src=x onerror" not in body, url
        bodies[url] = body
    return bodies


def ns_keys(namespace: str) -> Keyspace:
    return Keyspace(namespace)


def raw_event(redis_sync, namespace: str, sid: str, fields: dict) -> str:
    """XADD an entry into the session's stream and the feed, as the core's script would,
    but with whatever fields the attacker chose; the session is made visible in the index."""
    keys = ns_keys(namespace)
    skeys = keys.session(sid)
    entry_id = redis_sync.xadd(skeys.events, fields)
    redis_sync.xadd(keys.feed, {"s": sid, "e": entry_id, **fields})
    now = int(time.time() * 1000)
    if not redis_sync.exists(skeys.meta):
        redis_sync.hset(skeys.meta, mapping={"status": "active", "created": now})
    redis_sync.hset(skeys.meta, mapping={"last_id": entry_id, "last_ms": now})
    redis_sync.zadd(keys.activity, {sid: now})
    redis_sync.zadd(keys.status["active"], {sid: now})
    return entry_id


# -- presence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BAD_CAPABILITIES))
def test_agent_ready_with_malformed_capabilities_breaks_no_page(browse, redis_url, namespace, name):
    value = BAD_CAPABILITIES[name]
    agent = f"agent-{name}"

    async def announce():
        c = coord(redis_url, namespace, "presence-1")
        await c.publish(EventType.AGENT_READY, {"agent_id": agent, "capabilities": value})
        load = BAD_LOADS[len(name) % len(BAD_LOADS)]
        await c.publish(
            EventType.AGENT_READY, {"agent_id": agent + "-load", "capabilities": [], "load": load}
        )

    run(announce)
    bodies = walk(browse, ["presence-1"])
    agents = json.loads(bodies["/api/v1/agents/"])
    mine = next(a for a in agents if a["agent_id"] == agent)
    assert all(isinstance(c, str) for c in mine["capabilities"])
    assert len(mine["capabilities"]) <= 51  # 50 shown, then "(+N more)"
    if name in ("int", "bool", "object"):
        shown = json.dumps(value)
        assert mine["capabilities"] == [f"(invalid: {shown})"]
        assert escape(f"(invalid: {shown})") in bodies["/agents/"]
    if name == "markup":
        assert "&lt;img src=x onerror=alert(1)&gt;" in bodies["/agents/"]
    if name == "surrogate":
        assert "\ufffd" in bodies["/agents/"]
    loaded = next(a for a in agents if a["agent_id"] == agent + "-load")
    assert loaded["load"] is None or isinstance(loaded["load"], (int, float, str))


@pytest.mark.parametrize("name", list(RAW_RECORDS))
def test_raw_presence_records_break_no_page(browse, redis_sync, namespace, name):
    keys = ns_keys(namespace)
    agent = f"raw-{name}"
    redis_sync.hset(keys.agents, agent, RAW_RECORDS[name])
    redis_sync.zadd(keys.agents_seen, {agent: time.time() * 1000})
    # a last-seen time no date can show, and a record naming sessions that do not exist
    redis_sync.zadd(keys.agents_seen, {f"{agent}-inf": float("inf")})
    bodies = walk(browse, [])
    agents = {a["agent_id"]: a for a in json.loads(bodies["/api/v1/agents/"])}
    assert all(isinstance(c, str) for c in agents[agent]["capabilities"])
    assert agents[f"{agent}-inf"]["stale"] is True
    assert agent in bodies["/agents/"]


# -- events, state, session fields ---------------------------------------------------------------


def test_lone_surrogates_through_the_core_show_as_replacement_characters(
    browse, redis_url, namespace
):
    sid = "surrogates-1"

    async def poison():
        c = coord(redis_url, namespace, sid)
        await c.publish(EventType.MESSAGE, {f"key{LONE}": f"value{LONE}", "list": ["\udfff"]})
        await c.set_state("plain", f"state{LONE}")
        await c.set_state("list-not-string", ["a", LONE])
        await c.escalate(f"reason{LONE}", {"queue": "billing", "extra": {"x": LONE}})
        await c.publish(EventType.AGENT_READY, {"agent_id": "sur", "capabilities": [LONE]})

    run(poison)
    bodies = walk(browse, [sid])
    page = bodies[reverse("coordination:session", args=[sid])]
    assert "key\ufffd" in page and "value\ufffd" in page and "state\ufffd" in page
    assert "reason\ufffd" in page
    events = json.loads(bodies[f"/api/v1/events/{sid}"])["items"]
    assert events[0]["data"] == {"key\ufffd": "value\ufffd", "list": ["\ufffd"]}
    detail = json.loads(bodies[f"/api/v1/sessions/{sid}"])
    assert detail["state"]["plain"] == "state\ufffd"


@pytest.mark.parametrize("name", list(RAW_PAYLOADS))
def test_raw_stream_entries_of_any_shape_break_no_page(
    browse, redis_sync, namespace, name, figures
):  # figures: recorded once, by the last shape
    sid = f"raw-{name}"
    raw_event(redis_sync, namespace, sid, {"t": "message", "d": RAW_PAYLOADS[name]})
    entry = raw_event(
        redis_sync, namespace, sid, {"t": MARKUP, "d": "{}", "src": MARKUP, "junk": "x" * 1000}
    )
    # bytes that are not UTF-8 (a CESU-encoded surrogate, a stray 0xff)
    raw_event(redis_sync, namespace, sid, {"t": b"\xed\xa0\x80", "d": b"\xff{", "src": b"\xfe"})
    bodies = walk(browse, [sid])
    page = bodies[reverse("coordination:session", args=[sid])]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert f'data-event-id="{entry}"' in page
    items = json.loads(bodies[f"/api/v1/events/{sid}"])["items"]
    assert len(items) == 3
    assert all(isinstance(i["data"], dict) for i in items)
    if name not in ("empty", "surrogate"):
        assert "(invalid payload)" in items[0]["data"]
    if name == "surrogate":
        assert items[0]["data"]["k\ufffd"] == "v\ufffd"
    if name == list(RAW_PAYLOADS)[-1]:
        figures(
            "raw stream entries",
            f"XADD of {len(RAW_PAYLOADS)} payload shapes (not JSON, not an object, 5000 deep, "
            "surrogates), markup types and non-UTF-8 bytes; 12 pages and endpoints each",
            "no 5xx; payloads shown as invalid, markup escaped, surrogates as U+FFFD",
        )


def test_raw_session_fields_state_and_counters_of_wrong_types(browse, redis_sync, namespace):
    sid = "raw-fields"
    keys = ns_keys(namespace)
    skeys = keys.session(sid)
    raw_event(redis_sync, namespace, sid, {"t": "escalated", "d": '{"reason": 5, "queue": [1]}'})
    redis_sync.hset(
        skeys.meta,
        mapping={
            "status": "<b>escalated</b>",
            "fence": "abc",
            "last_ms": "soon",
            "created": "1e400",
            "escalated_ms": "9" * 30,
            "taken_ms": "-5",
            "controller": MARKUP,
            "owner": "<i>owner</i>",
            "esc_queue": "<q>" + "x" * 5000,
            "last_type": MARKUP,
        },
    )
    redis_sync.hset(skeys.claim, mapping={"agent": MARKUP, "token": "x", "expires": "never"})
    redis_sync.zadd(keys.escalations, {sid: time.time() * 1000})
    redis_sync.zadd(keys.status["escalated"], {sid: time.time() * 1000})
    redis_sync.hset(
        skeys.state,
        mapping={
            "not-json": "{oops",
            "list": '["a"]',
            "deep": "[" * 5000 + "]" * 5000,
            MARKUP: "1",
        },
    )
    redis_sync.hset(skeys.versions, mapping={"not-json": "abc", "list": "-1"})
    # an id the core would refuse (a newline), and index entries pointing at nothing
    bad = "bad\nid"
    redis_sync.hset(keys.session(bad).meta, mapping={"status": "active", "last_ms": "1"})
    redis_sync.zadd(keys.activity, {bad: time.time() * 1000, "ghost": time.time() * 1000})
    redis_sync.hset(keys.counters, mapping={"events:message": "many", "interventions:x": "1"})
    redis_sync.hset(keys.workers, mapping={"w1": "not json", "w2": '{"websockets": "lots"}'})
    redis_sync.set(f"{namespace}:{{relay}}:cursor", "not-an-id")
    minute = int(time.time() // 60)
    redis_sync.hset(keys.stats, mapping={str(minute): "lots", str(minute - 1): "1e9"})
    bodies = walk(browse, [sid])
    page = bodies[reverse("coordination:session", args=[sid])]
    assert "&lt;b&gt;escalated&lt;/b&gt;" in page
    assert "x" * 300 not in page  # a stored name is cut to the longest id the core accepts
    assert "(invalid value)" in page and "{oops" in page
    assert "&lt;script&gt;" in page
    detail = json.loads(bodies[f"/api/v1/sessions/{sid}"])
    assert detail["state"]["list"] == ["a"]
    assert detail["state"]["not-json"]["(invalid value)"] == "{oops"
    listed = [s["session_id"] for s in json.loads(bodies["/api/v1/sessions/"])["items"]]
    assert sid in listed and bad not in listed


def test_index_scores_an_agent_wrote_break_no_page(browse, redis_sync, namespace):
    """Scores are milliseconds the core wrote; ZADD lets anyone write inf, -inf, 1e300."""
    keys = ns_keys(namespace)
    raw_event(redis_sync, namespace, "scored", {"t": "message", "d": "{}"})
    redis_sync.hset(keys.session("scored").meta, "status", "waiting")
    for key, score in (
        (keys.status["waiting"], "inf"),
        (keys.escalations, "-inf"),
        (keys.status["escalated"], "1e300"),
        (keys.activity, "inf"),
        (keys.agents_seen, "-inf"),
    ):
        redis_sync.zadd(key, {"scored": score})
    redis_sync.zadd(keys.approvals, {"scored\0nope": "inf"})
    walk(browse, ["scored"])


@pytest.mark.parametrize(
    "key_name", ["approvals", "waiting", "escalations", "agents_seen", "session_approvals"]
)
def test_keys_of_the_wrong_type_break_no_page(browse, redis_sync, namespace, key_name):
    """``SET`` over a key the core keeps as a sorted set or hash: Redis answers WRONGTYPE."""
    keys = ns_keys(namespace)
    raw_event(redis_sync, namespace, "typed", {"t": "message", "d": "{}"})
    key = {
        "approvals": keys.approvals,
        "waiting": keys.status["waiting"],
        "escalations": keys.escalations,
        "agents_seen": keys.agents_seen,
        "session_approvals": keys.session("typed").approvals,
    }[key_name]
    if key_name == "session_approvals":  # queued, so the overview reads the session's hash
        redis_sync.zadd(keys.approvals, {"typed\0a1": time.time() * 1000})
    redis_sync.delete(key)
    redis_sync.set(key, "not what the core keeps here")
    walk(browse, ["typed"])


# -- live and reload alike -----------------------------------------------------------------------


def _rows(html: str) -> dict[str, str]:
    """Timeline rows by event id, relative times removed (they tick)."""
    rows = re.findall(r'(<li class="event[^"]*" id="ev-([^"]+)".*?</li>)', html, re.S)
    return {eid: re.sub(r"<time [^>]*>.*?</time>", "", row) for row, eid in rows}


@pytest.mark.django_db(transaction=True)
def test_a_replayed_row_is_the_row_the_page_renders(
    client,
    supervisor,  # noqa: F811
    redis_url,
    namespace,
    redis_sync,
):
    sid = "alike-1"

    async def poison():
        c = coord(redis_url, namespace, sid)
        await c.publish(EventType.MESSAGE, {f"k{LONE}": MARKUP, "big": "<" * 40_000})
        await c.escalate(LONE, {"queue": "billing"})

    run(poison)
    raw_event(redis_sync, namespace, sid, {"t": MARKUP, "d": "[1, 2]", "src": "\u202eevil"})
    client.force_login(supervisor)
    page_rows = _rows(client.get(reverse("coordination:session", args=[sid])).content.decode())
    assert len(page_rows) == 3

    async def replay() -> str:
        ws = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/session/{sid}/")
        ws.scope["user"] = supervisor
        connected, _ = await ws.connect()
        assert connected
        text = ""
        try:
            await ws.send_json_to({"resume": "0"})
            async with asyncio.timeout(15):
                while len(_rows(text)) < 3:
                    text += await ws.receive_from(timeout=10)
        finally:
            await ws.disconnect()
        return text

    live_rows = _rows(async_to_sync(replay)())
    assert live_rows == page_rows
    assert all(LONE not in row for row in live_rows.values())


# -- the relay and a browser -----------------------------------------------------------------------


@pytest.mark.browser
def test_poisoned_events_show_live_then_the_same_after_a_reload(
    asgi_server,
    page_factory,  # noqa: F811
    core,
    sid,
    redis_server_url,
    browser_namespace,
    figures,
):
    import redis

    core.publish(sid, EventType.MESSAGE, {"first": 1})
    page = page_factory(asgi_server.url)
    page.goto(f"{asgi_server.url}{reverse('coordination:session', args=[sid])}")
    wait_live(page)
    raw = redis.Redis.from_url(redis_server_url)
    try:
        core.publish(sid, EventType.MESSAGE, {f"k{LONE}": f"v{LONE}", "html": MARKUP})
        core.publish(
            sid,
            EventType.AGENT_READY,
            {"agent_id": f"{sid}-agent", "capabilities": [5, {"x": [1]}], "load": "high"},
        )
        core.publish(sid, EventType.MESSAGE, {"big": "<" * 100_000})
        raw_event(raw, browser_namespace, sid, {"t": MARKUP, "d": "{not json"})
        raw_event(raw, browser_namespace, sid, {"t": b"\xed\xa0\x80", "d": b'{"x": "\\ud800"}'})
        core.publish(sid, EventType.MESSAGE, {"after": "the poison"})
    finally:
        raw.close()
    timeline = page.locator("#timeline .event")
    expect(timeline).to_have_count(7, timeout=15_000)
    expect(page.locator("#timeline")).to_contain_text('"after": "the poison"')
    live = page.eval_on_selector_all("#timeline .event", "els => els.map(e => e.outerHTML)")
    page.reload()
    expect(timeline).to_have_count(7)
    reloaded = page.eval_on_selector_all("#timeline .event", "els => els.map(e => e.outerHTML)")
    strip = lambda rows: [re.sub(r"<time [^>]*>.*?</time>", "", r) for r in rows]  # noqa: E731
    assert strip(live) == strip(reloaded)
    text = page.locator("#timeline").inner_text()
    assert "\ufffd" in text and MARKUP in text  # shown as text, not run
    assert "(invalid payload)" in text
    assert page.dialogs == []
    page.goto(f"{asgi_server.url}/agents/")
    expect(page.locator("#agents-table")).to_contain_text("(invalid: 5)")
    figures(
        "poisoned events on an open session page",
        "lone surrogates, markup, a 100 kB payload, raw XADDs of non-JSON and non-UTF-8, bad presence",
        "relay kept going, rows pushed live equal the rows after a reload, no script ran",
    )
    assert SessionIndex  # the index the relay reads is the one the pages read


# -- any stored entry renders ----------------------------------------------------------------------

# text as JSON decoding can produce it: any code point, lone surrogates included
_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    etype=_text,
    source=st.none() | _text,
    payload=st.one_of(_json.map(lambda v: json.dumps(v)), _text),
    entry_id=st.sampled_from(["1700000000000-0", "0-1", "99999999999999999999-0"]),
)
def test_any_stored_entry_renders_as_a_row_that_can_be_sent(etype, source, payload, entry_id):
    """What the relay does with every feed entry: decode it and render its row. Whatever an
    agent stored, that must not raise, and the row must encode as UTF-8 (a frame or a page)."""
    fields = {"t": etype, "d": payload}
    if source is not None:
        fields["src"] = source
    item = event_item(event_from_fields("s-1", entry_id, fields))
    item["html"].encode("utf-8")
    assert item["id"] == entry_id
    assert "<script" not in item["html"].lower()
