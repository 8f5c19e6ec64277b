"""Exactly-once effects under retries (issue 17): every session script carries an operation id
and a retry with the same id returns the first outcome instead of acting twice."""

from __future__ import annotations

import asyncio

import pytest

from coordination import (
    AgentCoordinator,
    AtomicOperations,
    EventType,
    InvalidIdempotencyKey,
    RedisUnavailable,
    SessionTakenOver,
)
from coordination.core import connection, scripts
from coordination.core.base import new_op_id
from coordination.devtools.embedded_redis import EmbeddedRedis


def feed_entries(redis_sync, coord, session_id):
    return [fields for _, fields in redis_sync.xrange(coord.keys.feed) if fields["s"] == session_id]


async def test_same_idempotency_key_stores_one_event(make, redis_sync):
    coord = make.coordinator("s-idem")
    first = await coord.publish(EventType.MESSAGE, {"n": 1}, idempotency_key="k-1")
    again = await coord.publish(EventType.MESSAGE, {"n": 1}, idempotency_key="k-1")
    # a retry carrying other data still reports the event the first call stored
    other = await coord.publish(EventType.MESSAGE, {"n": 2}, idempotency_key="k-1")
    third = await coord.publish(EventType.MESSAGE, {"n": 3}, idempotency_key="k-2")
    assert again.id == first.id == other.id
    assert other.data == {"n": 1}
    assert third.id != first.id
    assert redis_sync.xlen(coord.keys.session("s-idem").events) == 2
    assert [f["d"] for f in feed_entries(redis_sync, coord, "s-idem")] == ['{"n":1}', '{"n":3}']
    counts = await make.index().counts_by_status()
    assert counts["active"] == 1


async def test_an_idempotency_key_is_per_session_and_per_operation(make, redis_sync):
    a, b = make.coordinator("s-a"), make.coordinator("s-b")
    ea = await a.publish(EventType.MESSAGE, {}, idempotency_key="same")
    eb = await b.publish(EventType.MESSAGE, {}, idempotency_key="same")
    assert redis_sync.xlen(a.keys.session("s-b").events) == 1
    assert ea.session_id == "s-a" and eb.session_id == "s-b"
    # the same key given to a claim is another operation
    assert await make.atomic().claim_handoff("s-a", "agent-1", idempotency_key="same")


async def test_a_refused_publish_is_replayed_as_refused(make):
    coord = make.coordinator("s-human")
    await coord.publish(EventType.MESSAGE, {})
    await coord.take_over("sup")
    with pytest.raises(SessionTakenOver):
        await coord.publish(EventType.MESSAGE, {}, guard=True, idempotency_key="g")
    await coord.hand_back()
    # the same operation again: its first outcome, although it would pass now
    with pytest.raises(SessionTakenOver):
        await coord.publish(EventType.MESSAGE, {}, guard=True, idempotency_key="g")
    await coord.publish(EventType.MESSAGE, {}, guard=True, idempotency_key="g2")


@pytest.mark.parametrize("key", ["", "x" * 257, 5, None.__class__, "k\ud800"])
async def test_bad_idempotency_keys_are_refused(make, key):
    # refused before anything is sent, as a CoordinationError (never a UnicodeEncodeError)
    with pytest.raises(InvalidIdempotencyKey):
        await make.coordinator("s-bad").publish(EventType.MESSAGE, {}, idempotency_key=key)


async def test_a_replayed_claim_reports_the_first_outcome(make):
    atomic = make.atomic()
    await make.coordinator("s-claim").publish(EventType.HANDOFF_READY, {})
    assert await atomic.claim_handoff("s-claim", "agent-1", idempotency_key="c1")
    # the same claim re-sent: the session is now claimed (by agent-1), yet it won
    assert await atomic.claim_handoff("s-claim", "agent-1", idempotency_key="c1")
    # a new claim by the same agent without the key is a new operation, and loses
    assert not await atomic.claim_handoff("s-claim", "agent-1")
    handoff = await atomic.get_handoff("s-claim")
    assert handoff.agent_id == "agent-1" and handoff.token == 1
    events = await make.coordinator("s-claim").events()
    assert [e.type for e in events].count(EventType.HANDOFF_CLAIMED) == 1


async def test_operation_ids_are_bounded_per_session(make, redis_sync):
    coord = make.coordinator("s-bound")
    keys = coord.keys.session("s-bound")
    for i in range(5):
        await coord.publish(EventType.MESSAGE, {"i": i}, idempotency_key=f"k{i}")
    # on one server an operation without a key is sent once and keeps no outcome; on a
    # Cluster the core itself re-sends after a failover, so every operation keeps one
    await coord.publish(EventType.MESSAGE, {"i": 5})
    kept = 6 if connection.is_cluster(coord.redis) else 5
    assert redis_sync.hlen(keys.ops) == kept
    ttl = redis_sync.pttl(keys.ops)
    assert scripts.OP_WINDOW_MS < ttl <= 2 * scripts.OP_WINDOW_MS
    # once the generation is a window old it moves aside and a new one starts
    redis_sync.pexpire(keys.ops, scripts.OP_WINDOW_MS - 1000)
    await coord.publish(EventType.MESSAGE, {}, idempotency_key="late")
    assert redis_sync.hlen(keys.ops_prev) == kept
    assert redis_sync.hkeys(keys.ops) == ["k:publish:late"]
    # ids of the previous generation are still answered from it
    assert len({e.id for e in await coord.events()}) == 7
    again = await coord.publish(EventType.MESSAGE, {"i": 0}, idempotency_key="k0")
    assert again.data == {"i": 0} and len(await coord.events()) == 7


class ReplyDropper:
    """A TCP proxy in front of a private redis-server that forwards every command and, while
    ``dropping``, throws the server's answers away: an answer lost after the server acted,
    deterministically (a paused server cannot say whether it ran a command it held)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.dropping = False
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _serve(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(src, dst, drop: bool) -> None:
            try:
                while data := await src.read(65536):
                    if not (drop and self.dropping):
                        dst.write(data)
                        await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def _lost_answer_setup(tmp_path, monkeypatch):
    monkeypatch.setattr(connection, "SOCKET_TIMEOUT", 0.3)
    server = EmbeddedRedis(tmp_path / "lost").start()
    proxy = ReplyDropper(server.port)
    url = await proxy.start()
    return server, proxy, url, connection.new_client(server.url)


async def test_publish_retried_after_a_lost_answer_is_stored_once(tmp_path, monkeypatch):
    server, proxy, url, direct = await _lost_answer_setup(tmp_path, monkeypatch)
    coord = AgentCoordinator("lost", url, namespace="once")
    events_key = coord.keys.session("lost").events
    try:
        await coord.publish(EventType.MESSAGE, {"n": 0})
        proxy.dropping = True
        with pytest.raises(RedisUnavailable):
            await coord.publish(EventType.MESSAGE, {"n": 1}, idempotency_key="retry-me")
        proxy.dropping = False
        # the server did store it: only the answer was lost
        assert await direct.xlen(events_key) == 2
        again = await coord.publish(EventType.MESSAGE, {"n": 1}, idempotency_key="retry-me")
        rows = await direct.xrange(events_key)
        assert len(rows) == 2
        assert again.id == rows[1][0] and again.data == {"n": 1}
        assert await direct.xlen(coord.keys.feed) == 2
    finally:
        await coord.aclose()
        await direct.aclose()
        await proxy.close()
        server.stop()


async def test_claim_retried_after_a_lost_answer_reports_the_first_outcome(tmp_path, monkeypatch):
    server, proxy, url, direct = await _lost_answer_setup(tmp_path, monkeypatch)
    atomic = AtomicOperations(url, namespace="once")
    try:
        await AgentCoordinator("c", url, namespace="once").publish(EventType.HANDOFF_READY, {})
        # the server knows the claim script (by SHA on Redis 6.2), so the attempt whose answer
        # is lost runs it rather than meeting NOSCRIPT
        assert await atomic.claim_handoff("warm-up", "agent-0")
        proxy.dropping = True
        with pytest.raises(RedisUnavailable):
            await atomic.claim_handoff("c", "agent-1", idempotency_key="claim-1")
        proxy.dropping = False
        assert await direct.hget(atomic.keys.session("c").claim, "agent") == "agent-1"
        # without the operation id this re-sent claim would find the session claimed: False
        assert await atomic.claim_handoff("c", "agent-1", idempotency_key="claim-1")
        handoff = await atomic.get_handoff("c")
        assert (handoff.agent_id, handoff.token) == ("agent-1", 1)
        claimed = await direct.xrange(atomic.keys.session("c").events)
        assert [f["t"] for _, f in claimed] == ["handoff_ready", "handoff_claimed"]
    finally:
        await atomic.aclose()
        await direct.aclose()
        await proxy.close()
        server.stop()


def test_operation_ids_are_unique():
    ids = {new_op_id() for _ in range(10_000)}
    assert len(ids) == 10_000


async def test_a_short_lived_session_keeps_its_ids_about_as_long(make, redis_sync):
    coord = make.coordinator("s-brief", retention=1.5)
    await coord.publish(EventType.MESSAGE, {}, idempotency_key="k")
    assert 0 < redis_sync.pttl(coord.keys.session("s-brief").ops) <= 3000


async def test_any_text_is_a_key_of_its_own(make, redis_sync):
    coord = make.coordinator("s-hostile")
    keys = ["\x00\n\r*3\r\n", "ключ", "{index}", "k:publish:x", "x" * 256]
    first = [
        await coord.publish(EventType.MESSAGE, {"i": i}, idempotency_key=k)
        for i, k in enumerate(keys)
    ]
    again = [await coord.publish(EventType.MESSAGE, {}, idempotency_key=k) for k in keys]
    assert [e.id for e in again] == [e.id for e in first]
    assert len({e.id for e in first}) == len(keys)
    assert redis_sync.xlen(coord.keys.session("s-hostile").events) == len(keys)
