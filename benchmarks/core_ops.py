"""Core operations against raw redis-py doing the least the same job needs, same Redis, same run.

Each comparison runs ours and raw redis-py in alternating rounds (so load beside the run hits
both alike) and reports the median of each side, their ratio, and what the server spent per
operation (``INFO commandstats``: every command's ``usec`` summed, before and after each side's
rounds, divided by the operations done). Both sides share one client among their tasks, as an
agent process shares the core's client per event loop.
"""

from __future__ import annotations

import asyncio
import functools
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


SCRIPT_COMMANDS = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall", "cmdstat_fcall_ro")


async def server_usec(client) -> tuple[float, float, float]:
    """What the server spent so far, in microseconds: (every command's ``usec`` summed, the
    script commands' ``usec`` alone, the main thread's CPU time).

    A script's ``usec`` includes the commands it calls, which ``INFO commandstats`` counts once
    more under their own names, so for a side that runs scripts the first figure double-counts
    and the second and third are the ones to read; the CPU time also holds the server's
    network and event-loop work."""
    stats = await client.info("commandstats")
    total = sum(v["usec"] for v in stats.values() if isinstance(v, dict))
    scripts = sum(stats[k]["usec"] for k in SCRIPT_COMMANDS if k in stats)
    cpu = await client.info("cpu")
    main = cpu.get("used_cpu_sys_main_thread", cpu["used_cpu_sys"]) + cpu.get(
        "used_cpu_user_main_thread", cpu["used_cpu_user"]
    )
    return total, scripts, main * 1e6


async def _throughput(client, make_op, tasks: int, ops_per_task: int) -> float:
    async def worker(i):
        op = make_op(i, client)
        for n in range(ops_per_task):
            await op(n)

    with Stopwatch() as sw:
        await asyncio.gather(*(worker(i) for i in range(tasks)))
    return tasks * ops_per_task / sw.seconds


async def compare(
    name,
    url,
    ours,
    baseline,
    *,
    tasks,
    ops,
    rounds,
    unit="ops/s",
    target=">= 0.9",
    info_client=None,
    raw_client=None,
):
    """Ours runs on a client made the way the library makes it (``new_client``), the
    baseline on a plain redis-py client, as a user would write it (``raw_client``, which
    ``compare`` closes; a one-server client when not given); rounds alternate."""
    raw_client = raw_client or aioredis.Redis.from_url(url, decode_responses=True)
    our_client = new_client(url)
    info = info_client or aioredis.Redis.from_url(url, decode_responses=True)
    per_task = max(10, ops // tasks)
    try:
        await _throughput(our_client, ours, tasks, max(5, per_task // 10))  # warm up
        await _throughput(raw_client, baseline, tasks, max(5, per_task // 10))
        mine, base, mine_us, base_us = [], [], [], []
        for _ in range(rounds):
            before = await server_usec(info)
            mine.append(await _throughput(our_client, ours, tasks, per_task))
            middle = await server_usec(info)
            base.append(await _throughput(raw_client, baseline, tasks, per_task))
            after = await server_usec(info)
            done = tasks * per_task
            # the INFO calls themselves are counted in the next snapshot: two per round
            mine_us.append([(middle[i] - before[i]) / done for i in range(3)])
            base_us.append([(after[i] - middle[i]) / done for i in range(3)])
    finally:
        await raw_client.aclose()
        await our_client.aclose()
        if info_client is None:
            await info.aclose()
    # ours: what its scripts and its plain reads cost (every command minus those the scripts
    # called would need per-caller stats Redis does not keep): scripts' usec + the non-script
    # part is taken from the CPU figure instead; raw: every command's usec
    ours_script_us = statistics.median(m[1] for m in mine_us)
    ours_cpu_us = statistics.median(m[2] for m in mine_us)
    raw_us = statistics.median(b[0] for b in base_us)
    raw_cpu_us = statistics.median(b[2] for b in base_us)
    return Row(
        f"{name} ({tasks} task{'s' if tasks > 1 else ''})",
        statistics.median(mine),
        statistics.median(base),
        unit,
        target=target,
        spread=f"ours {spread(mine)}; raw {spread(base)}; server us/op: scripts {ours_script_us:.1f}"
        f" (commandstats), CPU ours {ours_cpu_us:.1f} vs raw {raw_cpu_us:.1f}"
        f" (raw commands {raw_us:.1f})",
        extra={
            "server_script_us_ours": ours_script_us,
            "server_cpu_us_ours": ours_cpu_us,
            "server_cpu_us_raw": raw_cpu_us,
            "server_command_us_raw": raw_us,
            "tasks": tasks,
        },
    )


def _publish_ops(ns, publish="PUBLISH"):
    def ours(i, client):
        coord = AgentCoordinator(f"pub-{i}", client=client, namespace=ns)
        return lambda n: coord.publish(EventType.HANDOFF_READY, PAYLOAD)

    def raw(i, client):
        key, channel = f"{ns}:raw:{{pub-{i}}}:events", f"{ns}:raw:pub-{i}"

        async def op(n):
            data = json.dumps(PAYLOAD)
            async with client.pipeline(transaction=False) as pipe:
                pipe.xadd(key, {"t": "handoff_ready", "d": data}, maxlen=10000, approximate=True)
                pipe.execute_command(publish, channel, data)
                await pipe.execute()

        return op

    return ours, raw


def _claim_ops(ns):
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

    return ours, raw


def _state_ops(ns):
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

    return ours, raw


OPERATIONS = {
    "publish vs XADD+PUBLISH": (_publish_ops, "ops/s"),
    "claim+release vs SET NX PX+DEL": (_claim_ops, "pairs/s"),
    "set_state+get_state vs HSET+HGET": (_state_ops, "pairs/s"),
}


async def bench_operations(url, ns, tasks_list=(1, 16), ops=600, rounds=5) -> list[Row]:
    rows = []
    for tasks in tasks_list:
        for name, (make, unit) in OPERATIONS.items():
            ours, raw = make(ns)
            rows.append(
                await compare(name, url, ours, raw, tasks=tasks, ops=ops, rounds=rounds, unit=unit)
            )
    return rows


class ClusterInfo:
    """``info(section)`` summed over a Cluster's primaries, in the shape ``server_usec`` reads
    (``commandstats``: each command's ``usec``; ``cpu``: the CPU seconds), so the server's
    cost per operation counts every node the operation touched."""

    def __init__(self, nodes: list[tuple[str, int]]) -> None:
        self.clients = [aioredis.Redis(host=h, port=p, decode_responses=True) for h, p in nodes]

    async def info(self, section: str) -> dict:
        merged: dict = {}
        for client in self.clients:
            for name, value in (await client.info(section)).items():
                if isinstance(value, dict):
                    into = merged.setdefault(name, {"usec": 0, "calls": 0})
                    into["usec"] += value.get("usec", 0)
                    into["calls"] += value.get("calls", 0)
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    merged[name] = merged.get(name, 0) + value
        return merged

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


async def bench_cluster_operations(
    url, nodes, ns, tasks_list=(1, 16), ops=600, rounds=5
) -> list[Row]:
    """The rows of ``bench_operations`` on a Redis Cluster (``url`` is ``redis+cluster://``,
    ``nodes`` its primaries): ours through the library's cluster client, raw through redis-py's
    ``RedisCluster`` doing the same commands as on one server. Our writes take two steps there
    (the session's slot, then the index's: scripts.CLUSTER_EPILOGUE / APPLY_INDEX), so the
    ratio is lower by design; server us per operation are summed over the primaries."""
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    # redis-py refuses PUBLISH in a Cluster pipeline, and a PUBLISH there goes to every node
    # over the cluster bus; a Cluster's own form is SPUBLISH (Redis 7), sent to the slot of
    # the channel, which shares the stream's hash tag: one node, one round trip, as on one
    # server. Redis 6.2 has no SPUBLISH: PUBLISH, which redis-py sends to a node of its own.
    probe = aioredis.Redis(host=nodes[0][0], port=nodes[0][1], decode_responses=True)
    try:
        major = int((await probe.info("server"))["redis_version"].split(".")[0])
    finally:
        await probe.aclose()
    publish = "SPUBLISH" if major >= 7 else "PUBLISH"
    operations = {
        f"publish vs XADD+{publish}": (functools.partial(_publish_ops, publish=publish), "ops/s"),
        **{k: v for k, v in OPERATIONS.items() if not k.startswith("publish")},
    }
    rows = []
    for tasks in tasks_list:
        for name, (make, unit) in operations.items():
            ours, raw = make(ns)
            info = ClusterInfo(nodes)
            raw_client = RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in nodes], decode_responses=True
            )
            try:
                row = await compare(
                    f"cluster: {name}",
                    url,
                    ours,
                    raw,
                    tasks=tasks,
                    ops=ops,
                    rounds=rounds,
                    unit=unit,
                    target="stated",
                    info_client=info,
                    raw_client=raw_client,
                )
            finally:
                await info.aclose()
            row.extra["cluster_primaries"] = len(nodes)
            rows.append(row)
    return rows


async def bench_backlog(url, ns, events=2000, rounds=5) -> Row:
    """Read a session's backlog of ``events`` through ``subscribe()`` against a plain XREAD
    loop (COUNT 200, each payload decoded with ``json.loads``), alternating rounds."""
    coord = AgentCoordinator("backlog", url, namespace=ns)
    for _ in range(events):
        await coord.publish(EventType.MESSAGE, {"role": "user", "text": "hello", "n": 1})
    key = coord.keys.session("backlog").events
    client = aioredis.Redis.from_url(url, decode_responses=True)
    reader = AgentCoordinator("backlog", client=new_client(url), namespace=ns)

    async def ours():
        seen = 0
        async for _event in reader.subscribe(since="0"):
            seen += 1
            if seen == events:
                return

    async def raw():
        cursor, seen = "0", 0
        while seen < events:
            reply = await client.xread({key: cursor}, count=200, block=5000)
            for entry_id, fields in reply[0][1]:
                cursor = entry_id
                json.loads(fields["d"])
                seen += 1

    mine, base = [], []
    try:
        await ours()
        await raw()
        for _ in range(rounds):
            with Stopwatch() as sw:
                await ours()
            mine.append(events / sw.seconds)
            with Stopwatch() as sw:
                await raw()
            base.append(events / sw.seconds)
    finally:
        await client.aclose()
        await reader.redis.aclose()
    return Row(
        f"subscribe backlog of {events:,} events vs XREAD loop",
        statistics.median(mine),
        statistics.median(base),
        "events/s",
        target=">= 0.9",
        spread=f"ours {spread(mine)}; raw {spread(base)}",
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
    our_client = new_client(url)  # the client the library makes for itself
    ours = AgentCoordinator("up-ours", client=our_client, namespace=ns)
    atomic_up = up_atomic.AtomicOperations(client)
    atomic_ours = AtomicOperations(client=our_client, namespace=ns)
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
        await our_client.aclose()
    return rows
