"""Core operations against raw redis-py doing the least the same job needs, same Redis, same run."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import types

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from coordination import AgentCoordinator, AtomicOperations, EventType
from coordination.core.connection import new_client

from .common import Row, Stopwatch, percentile, publish_at_rate, spread

PAYLOAD = {
    "from_agent": "triage",
    "to_agent": "billing_specialist",
    "context": {"order_id": "ORD-12345"},
}


async def _clients(url: str, n: int) -> list[aioredis.Redis]:
    clients = [aioredis.Redis.from_url(url, decode_responses=True) for _ in range(n)]
    await asyncio.gather(*(c.ping() for c in clients))
    return clients


async def _throughput(clients, make_op, ops_per_client: int) -> float:
    async def worker(i, client):
        op = make_op(i, client)
        for n in range(ops_per_client):
            await op(n)

    with Stopwatch() as sw:
        await asyncio.gather(*(worker(i, c) for i, c in enumerate(clients)))
    return len(clients) * ops_per_client / sw.seconds


async def compare(
    name, url, namespace, ours, baseline, *, concurrency, ops, rounds, unit="ops/s", target=""
):
    """Ours runs on clients made the way the library makes them (``new_client``), the
    baseline on plain redis-py clients, as a user would write it."""
    clients = await _clients(url, concurrency)
    our_clients = [new_client(url) for _ in range(concurrency)]
    await asyncio.gather(*(c.ping() for c in our_clients))
    try:
        await _throughput(our_clients, ours, max(10, ops // 20))  # warm up scripts and pools
        await _throughput(clients, baseline, max(10, ops // 20))
        mine, base = [], []
        for _ in range(rounds):  # interleaved, so drift hits both sides alike
            mine.append(await _throughput(our_clients, ours, ops))
            base.append(await _throughput(clients, baseline, ops))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients + our_clients))
    return Row(
        f"{name} (c={concurrency})",
        statistics.median(mine),
        statistics.median(base),
        unit,
        target=target,
        spread=f"ours {spread(mine)}; raw {spread(base)}",
    )


async def bench_publish(url, ns, concurrency, ops, rounds):
    def ours(i, client):
        coord = AgentCoordinator(f"pub-{i}", client=client, namespace=ns)
        return lambda n: coord.publish(EventType.HANDOFF_READY, PAYLOAD)

    def raw(i, client):
        key, channel = f"{ns}:raw:{{pub-{i}}}:events", f"{ns}:raw:pub-{i}"

        async def op(n):
            data = json.dumps(PAYLOAD)
            async with client.pipeline(transaction=False) as pipe:
                pipe.xadd(key, {"t": "handoff_ready", "d": data}, maxlen=10000, approximate=True)
                pipe.publish(channel, data)
                await pipe.execute()

        return op

    return await compare(
        "publish vs XADD+PUBLISH",
        url,
        ns,
        ours,
        raw,
        concurrency=concurrency,
        ops=ops,
        rounds=rounds,
        target=">= 0.8",
    )


async def bench_claims(url, ns, concurrency, ops, rounds):
    def ours(i, client):
        atomic = AtomicOperations(client=client, namespace=ns)

        async def op(n):
            assert await atomic.claim_handoff(f"claim-{i}", "agent", ttl=30)
            assert await atomic.release_handoff(f"claim-{i}", "agent")

        return op

    def raw(i, client):
        key = f"{ns}:raw:{{claim-{i}}}:lock"

        async def op(n):
            assert await client.set(key, "agent", nx=True, px=30000)
            await client.delete(key)

        return op

    return await compare(
        "claim+release vs SET NX PX+DEL",
        url,
        ns,
        ours,
        raw,
        concurrency=concurrency,
        ops=ops,
        rounds=rounds,
        unit="pairs/s",
        target=">= 0.8",
    )


async def bench_state(url, ns, concurrency, ops, rounds):
    value = {"status": "in_progress", "items": [1, 2, 3]}

    def ours(i, client):
        coord = AgentCoordinator(f"state-{i}", client=client, namespace=ns)

        async def op(n):
            await coord.set_state("k", value)
            await coord.get_state("k")

        return op

    def raw(i, client):
        key = f"{ns}:raw:{{state-{i}}}:state"

        async def op(n):
            await client.hset(key, "k", json.dumps(value))
            json.loads(await client.hget(key, "k"))

        return op

    return await compare(
        "set_state+get_state vs HSET+HGET",
        url,
        ns,
        ours,
        raw,
        concurrency=concurrency,
        ops=ops,
        rounds=rounds,
        unit="pairs/s",
        target=">= 0.8",
    )


async def bench_subscribe_latency(url, ns, rate: int, seconds: float) -> Row:
    """Publish at ``rate`` events/s; a live subscriber measures publish-to-delivery latency."""
    publisher = AgentCoordinator("sub-lat", url, namespace=ns)
    listener = AgentCoordinator("sub-lat", url, namespace=ns)
    total = int(rate * seconds)
    latencies, seen = [], []
    start_id = (await publisher.publish(EventType.MESSAGE, {"t0": time.time(), "n": -1})).id

    async def listen():
        async for event in listener.subscribe(timeout=5, since=start_id):
            latencies.append((time.time() - event.data["t0"]) * 1000)
            seen.append(event.data["n"])
            if len(seen) >= total:
                return

    task = asyncio.create_task(listen())
    await publish_at_rate(publisher, rate, total)
    await asyncio.wait_for(task, 30)
    lost = total - len(set(seen))
    dup = len(seen) - len(set(seen))
    return Row(
        f"subscribe latency at {rate}/s",
        percentile(latencies, 99),
        None,
        "ms p99",
        higher_is_better=False,
        target="p99 <= 5 ms, 0 lost, 0 dup",
        spread=f"p50 {percentile(latencies, 50):.2f} ms, p99 {percentile(latencies, 99):.2f} ms, lost {lost}, duplicated {dup}, n={total}",
        extra={"p50_ms": percentile(latencies, 50), "lost": lost, "duplicated": dup},
    )


def load_upstream():
    """The upstream package's coordinator and atomic modules, without its heavy __init__."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("redis_openai_agents")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    package = types.ModuleType("redis_openai_agents")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["redis_openai_agents"] = package
    import importlib

    return importlib.import_module("redis_openai_agents.coordinator"), importlib.import_module(
        "redis_openai_agents.atomic"
    )


async def bench_upstream(url, ns, ops, rounds) -> list[Row]:
    modules = load_upstream()
    if modules is None:
        return [
            Row(
                "upstream redis-openai-agents",
                float("nan"),
                None,
                "-",
                spread="not installed (pip install --no-deps redis-openai-agents)",
            )
        ]
    up_coord, up_atomic = modules
    client = aioredis.Redis.from_url(url, decode_responses=True)
    coordinator = up_coord.AgentCoordinator(redis_url=url, stream_name=f"{ns}:upstream:events")
    ours = AgentCoordinator("up-ours", client=client, namespace=ns)
    atomic_up = up_atomic.AtomicOperations(client)
    atomic_ours = AtomicOperations(client=client, namespace=ns)
    rows = []
    try:

        async def timed(fn):
            values = []
            for _ in range(rounds):
                with Stopwatch() as sw:
                    for n in range(ops):
                        await fn(n)
                values.append(ops / sw.seconds)
            return values

        mine = await timed(lambda n: ours.publish(EventType.HANDOFF_READY, PAYLOAD))
        theirs = await timed(
            lambda n: coordinator.publish_handoff_ready(
                "triage", "billing", "s", PAYLOAD["context"]
            )
        )
        rows.append(
            Row(
                "publish vs upstream publish_handoff_ready",
                statistics.median(mine),
                statistics.median(theirs),
                "ops/s",
                spread=f"ours {spread(mine)}; upstream {spread(theirs)}",
            )
        )

        async def ours_claim(n):
            await atomic_ours.claim_handoff("up-claim", "a")
            await atomic_ours.release_handoff("up-claim", "a")

        async def their_claim(n):
            await atomic_up.atomic_handoff(f"{ns}:upstream:session", "triage", "billing", {"n": n})
            await atomic_up.release_handoff_lock(f"{ns}:upstream:session")

        mine = await timed(ours_claim)
        try:
            theirs = await timed(their_claim)
        except ResponseError as exc:  # its script uses JSON.* commands: Redis Stack only
            rows.append(
                Row(
                    "claim+release vs upstream atomic_handoff+release",
                    statistics.median(mine),
                    None,
                    "pairs/s",
                    spread=f"upstream could not run on this Redis: {str(exc)[-60:]}",
                )
            )
        else:
            rows.append(
                Row(
                    "claim+release vs upstream atomic_handoff+release",
                    statistics.median(mine),
                    statistics.median(theirs),
                    "pairs/s",
                    spread=f"ours {spread(mine)}; upstream {spread(theirs)}",
                )
            )
    finally:
        await coordinator.close()
        await client.aclose()
    return rows
