"""Reading a backlog (issue 18): entries decoded a batch at a time, as ``event_from_fields``
decodes them one by one, whoever wrote them; each event once, in order, across batches."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from coordination import EventType
from coordination.core.coordinator import SUBSCRIBE_BATCH
from coordination.core.events import (
    INVALID_PAYLOAD_KEY,
    Event,
    event_from_fields,
    events_from_entries,
    loads,
)

ENTRY_ID = "1700000000000-1"


@pytest.mark.parametrize(
    "flat",
    [
        # a repeated field: a dict keeps the last one, so must the flat decoding
        ["t", "message", "d", '{"a":1}', "src", "first", "src", "second"],
        ["t", "message", "d", '{"a":1}', "src", "x", "t", "escalated"],
        ["t", "message", "d", '{"a":1}', "op", "x", "d", '{"b":2}'],
        ["t", "message", "d", '{"a":1}', "src", "x", "extra", "y"],
        # JSON the core never writes, which json.loads still reads
        ["t", "message", "d", ' {"a":1}'],
        ["t", "message", "d", '{"a":1} '],
        ["t", "message", "d", '{"a":NaN}'],
        ["t", "message", "d", '{"a":1}{"b":2}'],
        ["t", "message", "d", '{"a":"\\ud800"}'],
        ["t", "message", "d", "[" * 5000 + "]" * 5000],
        ["t", "message", "d", ""],
        ["t", "message", "d", "null"],
        ["t", "message", "d", "{}", "src", ""],
        ["t", "", "d", "{}"],
    ],
)
def test_a_batch_decodes_each_entry_as_a_dict_of_its_fields_does(flat):
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    [batch_event] = events_from_entries("s", [(ENTRY_ID, flat)])
    dict_event = event_from_fields("s", ENTRY_ID, fields)
    assert batch_event == dict_event
    assert batch_event.extra == dict_event.extra
    assert (batch_event.source, batch_event.timestamp) == (dict_event.source, dict_event.timestamp)


def test_a_type_filter_keeps_the_order_and_applies_to_unreadable_entries_too():
    entries = [
        ("1-1", ["t", "message", "d", '{"n":1}']),
        ("1-2", ["t", "note", "d", '{"n":2}']),
        ("1-3", ["t", "message", "d", "[not json"]),  # kept, marked invalid
        ("1-4", ["t", "note", "d", "[not json"]),
        ("1-5", ["t", "message", "d", '{"n":5}', "src", "a"]),
    ]
    got = events_from_entries("s", entries, {EventType.MESSAGE})
    assert [e.id for e in got] == ["1-1", "1-3", "1-5"]
    assert (
        got[1].data == {INVALID_PAYLOAD_KEY: "[not json"} and "not JSON" in got[1].extra["invalid"]
    )


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1}',
        ' {"a":1}',
        '{"a":1}\n',
        "[1,2]",
        '"x"',
        "12345678901234567890123",
        "1e400",
        "NaN",
        '{"a":1}x',
        "",
        " ",
        "{",
        "{\"a\":'1'}",
        "[" * 3000 + "]" * 3000,
        '"\\ud800"',
    ],
)
def test_loads_answers_as_json_loads_does(text):
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            loads(text)
    else:
        got = loads(text)
        assert repr(got) == repr(expected) and type(got) is type(expected)


def test_events_built_for_a_batch_are_ordinary_frozen_events():
    [event] = events_from_entries("s", [(ENTRY_ID, ["t", "message", "d", '{"a":1}', "src", "b"])])
    assert type(event) is Event
    assert event == Event(ENTRY_ID, EventType.MESSAGE, {"a": 1}, "s", 1700000000.0, "b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = {}  # type: ignore[misc]
    assert (
        event.extra == {}
        and event.extra
        is not events_from_entries("s", [(ENTRY_ID, ["t", "message", "d", "{}"])])[0].extra
    )


async def test_a_backlog_over_several_batches_with_hostile_entries_is_read_once_in_order(
    make, redis_sync
):
    """Entries written around the core (raw XADD, as anyone holding REDIS_URL can) sit at the
    start, at a batch boundary and at the end; each is kept, none stops the reader."""
    coord = make.coordinator("s-backlog")
    key = coord.keys.session("s-backlog").events
    hostile = {
        0: {"t": "message", "d": "{not json"},
        SUBSCRIBE_BATCH - 1: {"t": "message", "d": '{"a":1}', "src": "x", "t2": "y"},
        SUBSCRIBE_BATCH: {"d": "[1,2]"},
    }
    total = 2 * SUBSCRIBE_BATCH + 7
    expected = []
    for n in range(total):
        if n in hostile:
            expected.append(redis_sync.xadd(key, hostile[n]))
        else:
            expected.append((await coord.publish(EventType.MESSAGE, {"n": n})).id)
    expected.append(redis_sync.xadd(key, {"t": "from-the-future", "d": '{"n":-1}'}))
    reader = make.coordinator("s-backlog")
    got = [e async for e in reader.subscribe(timeout=0.3)]
    assert [e.id for e in got] == expected
    assert [e.data.get("n") for i, e in enumerate(got) if i not in hostile][:-1] == [
        n for n in range(total) if n not in hostile
    ]
    assert all("invalid" in got[i].extra for i in (0, SUBSCRIBE_BATCH))
    assert got[-1].type == "from-the-future" and got[-1].data == {"n": -1}
    messages = [e.id async for e in reader.subscribe(timeout=0.3, types=["message"])]
    assert messages == [eid for i, eid in enumerate(expected[:-1]) if i != SUBSCRIBE_BATCH]


async def test_the_timeout_counts_from_when_the_caller_comes_back(make):
    """A caller busy with an event for longer than ``timeout`` still gets the event published
    meanwhile: the quiet time is the time spent waiting for Redis, not the caller's work."""
    coord = make.coordinator("s-busy")
    await coord.publish(EventType.MESSAGE, {"n": 0})
    seen = []
    async for event in coord.subscribe(timeout=0.5):
        seen.append(event.data["n"])
        if len(seen) == 1:
            await coord.publish(EventType.MESSAGE, {"n": 1})
            await asyncio.sleep(0.8)  # the caller's own work, longer than the timeout
    assert seen == [0, 1]
