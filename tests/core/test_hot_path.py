"""The hot path of issue 18: scripts as Redis 7 functions or by SHA, never sent twice blindly;
the Lua key table generated from Python; entries decoded flat as they would be from a dict."""

from __future__ import annotations

import json
import re
import uuid

import hiredis
import pytest
from redis.exceptions import ResponseError

from coordination import AgentCoordinator, EventType
from coordination.core import calls, connection, scripts
from coordination.core.calls import fast_pool
from coordination.core.events import event_from_fields, event_from_flat
from coordination.core.keys import Keyspace


def test_the_lua_key_table_follows_keyspace_global_keys():
    keys = Keyspace("ns")
    table = scripts.lua_key_table("KEYS", scripts.SESSION_KEY_COUNT)
    named = re.findall(r"\['([a-z:]+)'\]=KEYS\[(\d+)\]", table)
    assert [name for name, _ in named] == list(Keyspace.GLOBAL_KEY_NAMES)
    assert [int(i) for _, i in named] == list(
        range(scripts.SESSION_KEY_COUNT + 1, scripts.SESSION_KEY_COUNT + 1 + len(named))
    )
    assert len(named) == len(keys.global_keys())
    assert keys.global_keys()[Keyspace.GLOBAL_KEY_NAMES.index("counters")] == keys.counters


async def test_scripts_are_sent_again_only_when_the_server_says_they_did_not_run(make, redis_sync):
    coord = make.coordinator("hot-1")
    await coord.publish(EventType.MESSAGE, {"n": 1})
    if "cluster" in type(coord.redis).__module__:
        # Cluster clients keep redis-py's own path (it follows MOVED/ASK); only one-server
        # clients take the lean path this test is about.
        assert fast_pool(coord.redis) is None
        return
    assert fast_pool(coord.redis) is not None
    # the server forgets the library and the scripts (only ours: the server is shared)
    try:
        redis_sync.execute_command("FUNCTION", "DELETE", scripts.LIBRARY.name)
    except ResponseError:
        pass  # Redis 6.2 (no functions) or not loaded: scripts ran by SHA
    await coord.publish(EventType.MESSAGE, {"n": 2})
    assert [e.data["n"] for e in await coord.events()] == [1, 2]  # each stored once


@pytest.mark.parametrize(
    "flat",
    [
        ["t", "message", "d", '{"a":1}'],
        ["t", "message", "d", '{"a":1}', "src", "triage"],
        ["t", "message", "d", '{"a":1}', "src", ""],
        ["t", "message", "d", '{"a":1}', "op", "x1"],
        ["t", "message", "d", "[1]"],
        ["t", "message", "d", "not json"],
        ["t", "from-the-future", "d", "{}"],
        ["d", '{"a":1}', "t", "note"],
        ["t", "message", "d", '{"a":1}', "t", "note"],
        ["t", "message", "d", json.dumps({"big": 2**80})],
    ],
)
def test_flat_entries_decode_as_dicts_do(flat):
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    flat_event = event_from_flat("s", "1700000000000-1", flat)
    dict_event = event_from_fields("s", "1700000000000-1", fields)
    assert flat_event == dict_event
    assert flat_event.extra == dict_event.extra
    assert flat_event.source == dict_event.source


@pytest.mark.parametrize(
    "args",
    [
        ["s-1", 10000, 100000, 604800000, "agent-1", 30000, ""],
        ["s\u00e9", -1, 0, 1.5, "", "\x00\r\n*3\r\n$1", "k:claim:" + "x" * 300],
    ],
)
def test_a_call_packed_with_kept_keys_is_the_whole_command_packed(args):
    # the packed keys are kept per session and joined with the call's arguments: the bytes
    # must be exactly what packing the whole command gives (hostile text included)
    keys = Keyspace("ns").session("{a}/..").all() + Keyspace("ns").global_keys()
    whole = hiredis.pack_command(("FCALL", "lib_claim", len(keys), *keys, *args))
    joined = calls._pack_call("FCALL", "lib_claim", keys, calls.pack_keys(keys), args)
    assert joined == whole
    fixed = calls.pack_keys(keys, tuple(args[:4]))
    assert calls._pack_call("FCALL", "lib_claim", keys, fixed, args) == whole
    assert calls._pack_call("FCALL", "lib_claim", keys, None, args) == whole


async def test_an_idle_connection_the_server_dropped_is_replaced_before_the_next_script(
    redis_server_url,
):
    # The lean round trip keeps redis-py's health check of an idle connection, and a
    # connection the server closed while idle, found dead by that PING before anything of the
    # call was sent, is replaced: the operation runs instead of failing with RedisUnavailable.
    # (One server only: the lean path is not taken on a Cluster.)
    client = connection.new_client(redis_server_url)
    admin = connection.new_client(redis_server_url)
    coord = AgentCoordinator("idle", client=client, namespace=f"idle-{uuid.uuid4().hex[:12]}")
    try:
        await coord.publish(EventType.MESSAGE, {"n": 1})
        pool = fast_pool(client)
        assert pool is not None
        (idle,) = pool._available_connections
        own_id = await calls.command(pool, "CLIENT", "ID")
        await admin.execute_command("CLIENT", "KILL", "ID", own_id)
        idle.next_health_check = -1.0  # idle past the interval
        await coord.publish(EventType.MESSAGE, {"n": 2})
        assert [e.data["n"] for e in await coord.events()] == [1, 2]
    finally:
        await admin.delete(*coord.keys.session("idle").all(), *coord.keys.global_keys())
        await client.aclose()
        await admin.aclose()
