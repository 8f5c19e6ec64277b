"""The live path under load: N open overview pages while agents publish 50 events/s, and how
long ``/healthz`` takes to answer meanwhile (issue 18: 1,000 pages, p99 under 100 ms).

Real parts only: uvicorn processes started like ``serve`` starts them (``AsgiServer``), the
relay they elect, the authenticated channel layer, and N authenticated websockets on
``/ws/sessions/?view=overview`` (half of them a supervisor's, whose pushes hold forms with
their own CSRF token). The sockets live in a child process so that reading them does not slow
the probe that times ``/healthz``; the probe sends one request at a time to each server.

Each configuration runs twice on the same servers: with no page open (the baseline), then with
the N pages. Per notice and page: the servers' CPU time with the pages, less the baseline's,
over the frames the pages received (an overview page gets one frame per ``sessions.changed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import resource
import secrets
import statistics
import time

from coordination.devtools.processes import AsgiServer

from .common import Row, percentile

HEALTHZ_TIMEOUT = 10.0  # a probe that takes longer counts as failed (like a load balancer's)
PROBE_GAP = 0.05  # seconds between two probes of one server
SESSIONS = 300  # sessions the events are spread over
ESCALATED = 20  # of which escalated (the overview's queue has rows to draw)


def raise_fd_limit(need: int) -> int:
    """Two descriptors per page (client and server end, same machine) plus slack; the children
    inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


def run_queue_seconds(pid: int) -> float:
    """Seconds the process's main thread (the event loop) was runnable but waiting for a CPU:
    on a shared machine, the part of the latency that is other processes' doing."""
    try:
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def probe_once(port: int) -> tuple[float, int]:
    """One GET /healthz on a fresh connection: (milliseconds, status; 0 for no answer)."""
    started = time.perf_counter()
    status = 0
    try:
        async with asyncio.timeout(HEALTHZ_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            await writer.drain()
            line = await reader.readline()
            await reader.read()  # the whole answer, as a client would
            writer.close()
            status = int(line.split()[1])
    except (OSError, TimeoutError, ValueError, IndexError):
        status = 0
    return (time.perf_counter() - started) * 1000, status


async def probe(ports: list[int], stop: asyncio.Event) -> list[tuple[float, int]]:
    results: list[tuple[float, int]] = []

    async def one(port):
        while not stop.is_set():
            results.append(await probe_once(port))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_GAP)

    await asyncio.gather(*(one(p) for p in ports))
    return results


# -- the pages: a child process holding the websockets --------------------------------------


def _pages_main(conn, urls: list[str], cookies: list[str]) -> None:
    asyncio.run(_pages(conn, urls, cookies))


async def _pages(conn, urls, cookies) -> None:
    import websockets

    frames = [0] * len(urls)
    sizes = [0] * len(urls)
    opened = 0
    errors: list[str] = []
    sockets = []
    sem = asyncio.Semaphore(40)

    settled = asyncio.Event()
    stopping = asyncio.Event()
    failed: list[str] = []
    reconnects = [0]

    def connect(i):
        return websockets.connect(
            urls[i],
            origin=urls[i].replace("ws://", "http://").split("/ws/")[0],
            additional_headers={"Cookie": cookies[i]},
            max_size=None,
            ping_interval=None,  # a loaded server is slow to pong; that is measured
            open_timeout=120,
        )

    async def page(i):
        """Like a browser's page: says where to resume on every open (app.js), and reconnects
        after a close with the htmx ws extension's delay (full jitter, 1 s doubling to 64 s)."""
        nonlocal opened
        try:
            async with sem:
                ws = await connect(i)
            await ws.send(json.dumps({"resume": "0-0"}))
            sockets.append(ws)
            opened += 1
        except Exception as exc:
            failed.append(repr(exc))
            return
        finally:
            if opened + len(failed) >= len(urls):
                settled.set()
        retries = 0
        while True:
            try:
                async for message in ws:
                    frames[i] += 1
                    sizes[i] += len(message)
                    retries = 0
            except websockets.ConnectionClosed as exc:
                errors.append(f"closed {exc.rcvd.code if exc.rcvd else '?'}")
            if stopping.is_set():
                return
            retries += 1
            await asyncio.sleep(random.random() * 2 ** min(retries, 6))
            try:
                ws = await connect(i)
                await ws.send(json.dumps({"resume": "0-0"}))
                sockets.append(ws)
                reconnects[0] += 1
            except Exception as exc:
                errors.append(f"reconnect failed: {type(exc).__name__}")

    tasks = [asyncio.create_task(page(i)) for i in range(len(urls))]
    await settled.wait()
    conn.send(("ready", opened, failed[:5]))
    await asyncio.to_thread(conn.recv)  # "mark": count from here
    marked = list(frames), list(sizes)
    conn.send("marked")
    await asyncio.to_thread(conn.recv)  # "stop"
    stopping.set()
    counted = [f - m for f, m in zip(frames, marked[0], strict=True)]
    counted_bytes = [s - m for s, m in zip(sizes, marked[1], strict=True)]
    for ws in sockets:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 5)
    for t in tasks:
        t.cancel()
    conn.send((counted, counted_bytes, errors[:20], len(errors), reconnects[0]))


# -- the run ---------------------------------------------------------------------------------


def _make_users(site) -> list[str]:
    """A viewer's and a supervisor's cookies (each page gets its own CSRF token)."""
    from django.contrib.auth.models import Permission, User

    supervisor, _ = User.objects.get_or_create(username="bench-supervisor")
    supervisor.set_password("bench-password-2")
    supervisor.save()
    supervisor.user_permissions.add(Permission.objects.get(codename="intervene"))
    viewer = site.session_cookie()
    viewer_user = site.user
    site.user = supervisor
    try:
        supervisor_cookie = site.session_cookie()
    finally:
        site.user = viewer_user
    return [viewer, supervisor_cookie]


async def _populate(site) -> list:
    from coordination import AgentCoordinator, EventType

    coords = [
        AgentCoordinator(f"fan-{n:04d}", site.redis_url, namespace=site.namespace)
        for n in range(SESSIONS)
    ]
    await asyncio.gather(*(c.publish(EventType.MESSAGE, {"n": 0}) for c in coords))
    await asyncio.gather(
        *(c.escalate(f"needs a person #{n}") for n, c in enumerate(coords[:ESCALATED]))
    )
    return coords


async def _publish(coords, rate: int, stop: asyncio.Event) -> int:
    from coordination import EventType

    sent, start = 0, time.perf_counter()
    while not stop.is_set():
        await coords[sent % len(coords)].publish(EventType.MESSAGE, {"n": sent, "text": "x" * 80})
        sent += 1
        delay = start + sent / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    return sent


async def _phase(servers, coords, rate, seconds, pages=None):
    """Publish at ``rate`` for ``seconds`` while probing /healthz; the servers' CPU time."""
    stop = asyncio.Event()
    cpu0 = [cpu_seconds(s.process.pid) for s in servers]
    waited0 = [run_queue_seconds(s.process.pid) for s in servers]
    if pages is not None:
        pages.send("mark")
        await asyncio.to_thread(pages.recv)
    wall0 = time.perf_counter()
    began = time.monotonic()
    publisher = asyncio.create_task(_publish(coords, rate, stop))
    prober = asyncio.create_task(probe([s.port for s in servers], stop))
    await asyncio.sleep(seconds)
    stop.set()
    sent = await publisher
    probes = await prober
    wall = time.perf_counter() - wall0
    cpu = sum(cpu_seconds(s.process.pid) for s in servers) - sum(cpu0)
    waited = sum(run_queue_seconds(s.process.pid) for s in servers) - sum(waited0)
    load = os.getloadavg()[0]
    return {
        "probes": probes,
        "cpu": cpu,
        "wall": wall,
        "sent": sent,
        "waited": waited,
        "load": load,
        "monotonic": (began, time.monotonic()),
    }


def _census_env() -> dict[str, str]:
    """``FANOUT_GC_CENSUS=<seconds>``: the servers count what reaches generation 2 in one
    second, that long after start-up (coordination/realtime/gc_report.py)."""
    census = os.environ.get("FANOUT_GC_CENSUS")
    return {"COORDINATION_GC_PROMOTED": census} if census else {}


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _mb(values: list[float]) -> str:
    return "+".join(f"{v:.0f}" for v in values)


def _gc_line(stats: list[dict]) -> str:
    """Per server, over its whole life (both phases): full collections, their longest, and
    the collections of each generation."""
    parts = []
    for s in stats:
        if not s:
            parts.append("gc: no report")
            continue
        full = [f["ms"] for f in s["full_loaded"]]
        parts.append(
            f"gc collections {s['collections']} (gen2 with pages, ms: "
            f"{' '.join(f'{ms:.0f}' for ms in full) or 'none'}; "
            f"max gen0/1/2 {'/'.join(f'{ms:.0f}' for ms in s['max_ms'])} ms)"
        )
    return "; ".join(parts)


def _summary(probes):
    ok = [ms for ms, status in probes if status == 200]
    bad = sum(1 for _, status in probes if status != 200)
    return {
        "p50_ms": percentile(ok, 50) if ok else float("nan"),
        "p90_ms": percentile(ok, 90) if ok else float("nan"),
        "p95_ms": percentile(ok, 95) if ok else float("nan"),
        "over_100_ms": sum(1 for ms, _ in probes if ms > 100),
        "p99_ms": percentile(ok + [HEALTHZ_TIMEOUT * 1000] * bad, 99),
        "max_ms": max([ms for ms, _ in probes], default=float("nan")),
        "non_200": bad,
        "probes": len(probes),
    }


async def bench_fanout(site, pages: int, seconds: float, processes: int = 1, rate: int = 50) -> Row:
    limit = raise_fd_limit(2 * pages + 1024)
    coords = await _populate(site)
    cookies = await asyncio.to_thread(_make_users, site)
    gc_files = [f"{site.tmp}/gc-{n}.json" for n in range(processes)]
    servers = [
        AsgiServer({**site.env, "COORDINATION_GC_REPORT": path, **_census_env()}).start()
        for path in gc_files
    ]
    rss = {"started": [s.rss_mb() for s in servers]}
    print(f"fanout: uvicorn pids {' '.join(str(s.process.pid) for s in servers)}", flush=True)
    context = multiprocessing.get_context("spawn")
    parent = child = None
    try:
        base = await _phase(servers, coords, rate, seconds)
        urls, page_cookies = [], []
        for i in range(pages):
            server = servers[i % processes]
            urls.append(f"ws://127.0.0.1:{server.port}/ws/sessions/?view=overview")
            csrf = secrets.token_urlsafe(24).replace("-", "a").replace("_", "b")[:32]
            page_cookies.append(f"{cookies[i % 2]}; csrftoken={csrf}")
        parent, child_conn = context.Pipe()
        child = context.Process(
            target=_pages_main,
            args=(child_conn, urls, page_cookies),
            daemon=True,
        )
        opening = time.perf_counter()
        child.start()
        _, opened, failed = await asyncio.to_thread(parent.recv)
        open_seconds = time.perf_counter() - opening
        rss["pages_open"] = [s.rss_mb() for s in servers]
        loaded = await _phase(servers, coords, rate, seconds, pages=parent)
        rss["end"] = [s.rss_mb() for s in servers]
        parent.send("stop")
        frames, sizes, errors, error_count, reconnects = await asyncio.to_thread(parent.recv)
    finally:
        if child is not None:
            child.join(15)
            if child.is_alive():
                child.kill()
        for server in servers:
            server.stop()
    gc_stats = [_read_json(path) for path in gc_files]
    for s in gc_stats:  # the full collections while the pages were open and notices flowing
        if s:
            begin, end = (t - s["started_monotonic"] for t in loaded["monotonic"])
            s["full_loaded"] = [f for f in s["full"] if begin <= f["at_s"] <= end]
    total_frames = sum(frames)
    extra_cpu = loaded["cpu"] - base["cpu"] * loaded["wall"] / base["wall"]
    per_page_us = extra_cpu / total_frames * 1e6 if total_frames else float("nan")
    b, lo = _summary(base["probes"]), _summary(loaded["probes"])
    notices_per_page = statistics.median(frames) if frames else 0
    name = f"/healthz p99 with {pages:,} overview pages on {processes} process{'es' if processes > 1 else ''}"
    return Row(
        name,
        lo["p99_ms"],
        b["p99_ms"],
        "ms p99",
        higher_is_better=False,
        target="p99 < 100 ms, 0 non-200",
        spread=(
            f"healthz p50 {lo['p50_ms']:.1f} ms (no pages {b['p50_ms']:.1f}), p95 {lo['p95_ms']:.1f} "
            f"(no pages {b['p95_ms']:.1f}), p99 {lo['p99_ms']:.1f} "
            f"(no pages {b['p99_ms']:.1f}), max {lo['max_ms']:.0f} (no pages {b['max_ms']:.0f}), "
            f"over 100 ms {lo['over_100_ms']} (no pages {b['over_100_ms']}), "
            f"non-200 {lo['non_200']}/{lo['probes']} "
            f"(no pages {b['non_200']}/{b['probes']}); {rate} events/s for {seconds:g} s; "
            f"pages opened {opened}/{pages} in {open_seconds:.0f} s, frames per page median "
            f"{notices_per_page} ({notices_per_page / loaded['wall']:.1f}/s), closed {error_count} (reconnected {reconnects}); "
            f"server CPU {loaded['cpu'] / loaded['wall'] * 100:.0f}% (no pages "
            f"{base['cpu'] / base['wall'] * 100:.0f}%), {per_page_us:.0f} us CPU per notice per page; "
            f"event loop waiting for a CPU {loaded['waited'] / loaded['wall'] * 100:.0f}% of the time "
            f"(no pages {base['waited'] / base['wall'] * 100:.0f}%), machine load {loaded['load']:.1f}; "
            f"RSS MB started/pages open/end {_mb(rss['started'])}/{_mb(rss['pages_open'])}/"
            f"{_mb(rss['end'])}; {_gc_line(gc_stats)}"
        ),
        extra={
            "pages": pages,
            "processes": processes,
            "rate": rate,
            "seconds": seconds,
            "fd_limit": limit,
            "baseline": b,
            "loaded": lo,
            "opened": opened,
            "open_failures": failed,
            "open_seconds": open_seconds,
            "frames_per_page_median": notices_per_page,
            "frames_total": total_frames,
            "bytes_per_frame_mean": (sum(sizes) / total_frames) if total_frames else None,
            "closed": error_count,
            "reconnected": reconnects,
            "close_reasons": errors,
            "cpu_seconds": {"baseline": base["cpu"], "loaded": loaded["cpu"]},
            "wall_seconds": {"baseline": base["wall"], "loaded": loaded["wall"]},
            "cpu_us_per_notice_per_page": per_page_us,
            "events_sent": {"baseline": base["sent"], "loaded": loaded["sent"]},
            "run_queue_seconds": {"baseline": base["waited"], "loaded": loaded["waited"]},
            "load_average": {"baseline": base["load"], "loaded": loaded["load"]},
            "rss_mb": rss,
            "gc": gc_stats,
        },
    )


def main() -> None:
    """``python -m benchmarks.fanout [pages] [seconds] [processes]``: one configuration, printed
    (for profiling runs; ``python -m benchmarks --only fanout`` writes the results)."""
    import sys

    from .common import drop_namespace, new_namespace, redis_url
    from .dashboard import Site

    pages = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 15
    processes = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    url, embedded = redis_url()
    namespace = new_namespace()
    try:
        site = Site(url, namespace)
        row = asyncio.run(bench_fanout(site, pages, seconds, processes))
        print(row.name, f"{row.ours:.1f}", row.unit)
        print(row.spread)
        extra = row.extra
        print(
            "bytes per frame",
            extra["bytes_per_frame_mean"],
            "close reasons",
            extra["close_reasons"][:5],
            "open failures",
            extra["open_failures"],
        )
        for stats in extra["gc"]:
            if stats.get("census"):
                print("gc census", json.dumps(stats["census"]))
    finally:
        drop_namespace(url, namespace)
        if embedded:
            embedded.stop()


if __name__ == "__main__":
    main()
