"""Property-based bad input: every value either gets the documented error, touching nothing,
or round-trips exactly."""

from __future__ import annotations

import asyncio
import math
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordination import (
    AgentCoordinator,
    CoordinationError,
    EventType,
    InvalidSessionId,
    PayloadNotJSON,
    PayloadTooLarge,
    UnknownEventType,
)

EXAMPLES = 150
COMMON = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
)
anything = st.recursive(
    st.one_of(json_leaf, st.binary(max_size=4), st.sets(st.integers(), max_size=2)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), children, max_size=4),
    ),
    max_leaves=20,
)


def exact(a, b) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0 is not True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list):
        return len(a) == len(b) and all(exact(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(exact(a[k], b[k]) for k in a)
    return a == b


TALLY: Counter = Counter()


def run(coro):
    return asyncio.run(coro)


@COMMON
@given(session_id=st.text(max_size=300))
def test_session_ids(redis_url, namespace, ns_keys, session_id):
    async def go():
        coord_error = None
        try:
            coord = AgentCoordinator(session_id, redis_url, namespace=namespace)
        except InvalidSessionId as exc:
            coord_error = exc
        if coord_error is not None:
            return "refused"
        event = await coord.publish(EventType.MESSAGE, {"ok": True})
        events = await coord.events()
        await coord.clear()
        await coord.aclose()
        assert events == [event] and events[0].session_id == session_id
        return "accepted"

    before = ns_keys()
    outcome = run(go())
    TALLY["session id " + outcome] += 1
    if outcome == "refused":
        assert ns_keys() == before


@COMMON
@given(event_type=st.one_of(st.text(max_size=30), st.sampled_from([e.value for e in EventType])))
def test_event_types(redis_url, namespace, ns_keys, event_type):
    async def go():
        coord = AgentCoordinator("types", redis_url, namespace=namespace)
        try:
            try:
                event = await coord.publish(event_type, {})
            except UnknownEventType as exc:
                assert "valid types are" in str(exc)
                return None
            except CoordinationError as exc:  # reserved types name the operation to use
                return exc
            return event
        finally:
            await coord.aclose()

    before = ns_keys()
    result = run(go())
    TALLY[
        "event type "
        + ("refused" if result is None or isinstance(result, Exception) else "accepted")
    ] += 1
    if result is None or isinstance(result, Exception):
        assert ns_keys() == before
    else:
        assert result.type.value == event_type


@COMMON
@given(payload=st.dictionaries(st.text(max_size=8), anything, max_size=5))
def test_payloads(redis_url, namespace, ns_keys, payload):
    async def go():
        coord = AgentCoordinator("payloads", redis_url, namespace=namespace, max_payload_bytes=2000)
        try:
            try:
                event = await coord.publish(EventType.MESSAGE, payload)
            except (PayloadNotJSON, PayloadTooLarge) as exc:
                assert str(exc)
                return None
            [stored] = await coord.events(newest_first=True, limit=1)
            await coord.clear()
            return event, stored
        finally:
            await coord.aclose()

    before = ns_keys()
    result = run(go())
    TALLY["payload " + ("refused" if result is None else "accepted")] += 1
    if result is None:
        assert ns_keys() == before
    else:
        event, stored = result
        assert exact(stored.data, payload) and stored.id == event.id


@COMMON
@given(key=st.text(max_size=20), value=anything)
def test_state_values(redis_url, namespace, ns_keys, key, value):
    async def go():
        coord = AgentCoordinator("state", redis_url, namespace=namespace, max_payload_bytes=2000)
        try:
            try:
                await coord.set_state(key, value)
            except (PayloadNotJSON, PayloadTooLarge):
                return "refused", None
            got = await coord.get_state(key, default=KeyError)
            await coord.clear()
            return "stored", got
        finally:
            await coord.aclose()

    before = ns_keys()
    outcome, got = run(go())
    TALLY["state value " + outcome] += 1
    if outcome == "refused":
        assert ns_keys() == before
    else:
        assert exact(got, value)


def test_record_bad_input_figures(figures):
    for kind in ("session id", "event type", "payload", "state value"):
        refused = TALLY[f"{kind} refused"]
        accepted = TALLY[f"{kind} accepted"] + TALLY[f"{kind} stored"]
        figures(
            f"bad input: {kind}s (hypothesis)",
            f"{refused + accepted} generated values",
            f"{accepted} round-tripped exactly, {refused} refused with the documented error and nothing written",
        )
    assert sum(TALLY.values()) > 0
