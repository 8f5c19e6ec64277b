"""Shared state: exact JSON round-trips, STATE_CHANGED events, versioned compare-and-set."""

from __future__ import annotations

import pytest

from coordination import EventType, PayloadNotJSON, PayloadTooLarge, VersionConflict

VALUES = [
    None,
    True,
    False,
    0,
    -7,
    2**62,
    1.5,
    -0.25,
    1e-300,
    "",
    "text",
    "ünïcödé ✓",
    "\ud800",
    [],
    [1, "two", None, [3.0]],
    {},
    {"nested": {"a": [True, {"b": None}]}},
    "{braces}:colon",
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
async def test_every_json_value_round_trips_exactly(make, value):
    coord = make.coordinator("s-json")
    await coord.set_state("k", value)
    got = await coord.get_state("k", default="MISSING")
    assert got == value and type(got) is type(value)
    assert (await coord.get_all_state())["k"] == value


async def test_none_is_a_value_not_a_missing_key(make):
    coord = make.coordinator("s-none")
    await coord.set_state("resolution", None)
    assert await coord.get_state("resolution", default="MISSING") is None
    assert await coord.get_state("absent", default="MISSING") == "MISSING"
    assert await coord.get_all_state() == {"resolution": None}


async def test_each_change_publishes_key_old_and_new(make):
    coord = make.coordinator("s-changed", source="bot")
    await coord.set_state("status", "new")
    await coord.set_state("status", "open")
    await coord.delete_state("status")
    events = [e for e in await coord.events() if e.type is EventType.STATE_CHANGED]
    assert [(e.data["old"], e.data["new"]) for e in events] == [
        (None, "new"),
        ("new", "open"),
        ("open", None),
    ]
    assert events[-1].data["deleted"] is True
    assert [e.data["version"] for e in events] == [1, 2, 3]
    assert events[0].source == "bot"


async def test_update_state_sets_several_keys_and_returns_versions(make):
    coord = make.coordinator("s-update")
    assert await coord.update_state({"a": 1, "b": [2]}) == {"a": 1, "b": 1}
    assert await coord.get_all_state() == {"a": 1, "b": [2]}
    assert await coord.delete_state("missing") is False


async def test_stale_compare_and_set_is_refused_and_writes_nothing(make):
    coord = make.coordinator("s-cas")
    await coord.set_state("plan", "A")
    [(value, version)] = (await coord.get_state_versions()).values()
    await coord.set_state("plan", "B")  # an agent changes it meanwhile
    with pytest.raises(VersionConflict) as info:
        await coord.update_state({"plan": "C", "other": 1}, expected_versions={"plan": version})
    assert info.value.current_value == "B" and info.value.expected == 1 and info.value.actual == 2
    assert await coord.get_all_state() == {"plan": "B"}
    assert await coord.set_state("plan", "C", expected_version=2) == 3


@pytest.mark.parametrize(
    "value, fragment",
    [
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        ({1: "x"}, "key 1 of type int"),
        ((1, 2), "tuple"),
        ({"a": {1, 2}}, "state['k'].a is a set"),
        (object(), "object"),
    ],
)
async def test_non_json_values_get_a_clear_error_and_nothing_is_written(
    make, ns_keys, value, fragment
):
    coord = make.coordinator("s-bad")
    with pytest.raises(PayloadNotJSON, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        await coord.set_state("k", value)
    assert ns_keys() == set()


async def test_too_deep_and_too_large(make, ns_keys):
    coord = make.coordinator("s-big", max_payload_bytes=1000)
    deep: list = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(PayloadNotJSON, match="nested deeper"):
        await coord.set_state("k", deep)
    with pytest.raises(PayloadTooLarge, match="limit is 1000 bytes"):
        await coord.publish(EventType.MESSAGE, {"text": "x" * 2000})
    assert ns_keys() == set()


async def test_state_written_around_the_core_raises_a_coordination_error(make, redis_sync):
    from coordination import CorruptStoredValue
    from coordination.core.coordinator import InvalidStoredValue

    coord = make.coordinator("s-raw-state")
    await coord.set_state("good", 1)
    keys = coord.keys.session("s-raw-state")
    redis_sync.hset(keys.state, "bad", "{not json")
    with pytest.raises(CorruptStoredValue, match="bad"):
        await coord.get_state("bad")
    with pytest.raises(CorruptStoredValue):
        await coord.get_all_state()
    assert await coord.get_state("good") == 1
    kept = await coord.get_state_versions(keep_invalid=True)
    assert kept["good"] == (1, 1)
    assert kept["bad"][0] == InvalidStoredValue("{not json", "not JSON (JSONDecodeError)")


async def test_a_heartbeat_over_a_presence_record_that_is_not_json_replaces_it(make, redis_sync):
    index = make.index()
    redis_sync.hset(index.keys.agents, "billing", "garbage[")
    await index.heartbeat("billing", load=0.5)
    [agent] = await index.agents()
    assert agent.agent_id == "billing" and agent.load == 0.5
