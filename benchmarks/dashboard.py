"""Dashboard benchmarks: page server time against data size, and publish-to-websocket latency
through a real uvicorn, the relay and the channel layer."""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import websockets

from coordination.devtools.processes import AsgiServer

from .common import Row, Stopwatch, percentile, publish_at_rate

ROOT = Path(__file__).resolve().parents[1]
EVENT_ID = re.compile(r'data-event-id="([^"]+)"')
T0 = re.compile(r"&quot;t0&quot;: ([0-9.]+)")


class Site:
    """Django configured on a temporary SQLite database, this Redis and a benchmark namespace."""

    def __init__(self, redis_url: str, namespace: str) -> None:
        self.tmp = tempfile.mkdtemp(prefix="coord-bench-")
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "coordinator_site.settings",
            "DATABASE_URL": f"sqlite:///{self.tmp}/db.sqlite3",
            "REDIS_URL": redis_url,
            "COORDINATION_NAMESPACE": namespace,
            "COORDINATION_VAR_DIR": self.tmp,
            "DEBUG": "true",
            "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        }
        os.environ.update({k: v for k, v in self.env.items() if k != "PATH"})
        import django

        django.setup()
        from django.contrib.auth.models import User
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        self.user = User.objects.create_user("bench", password="bench-password-1")
        self.redis_url, self.namespace = redis_url, namespace

    def session_cookie(self) -> str:
        from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
        from django.contrib.sessions.backends.db import SessionStore

        store = SessionStore()
        store[SESSION_KEY] = str(self.user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = self.user.get_session_auth_hash()
        store.create()
        return f"sessionid={store.session_key}"


async def _populate_sessions(redis_url, namespace, start: int, stop: int) -> None:
    from coordination import AgentCoordinator, EventType

    sem = asyncio.Semaphore(32)

    async def one(n):
        async with sem:
            await AgentCoordinator(f"pop-{n:07d}", redis_url, namespace=namespace).publish(
                EventType.MESSAGE, {"n": n}
            )

    for chunk in range(start, stop, 5000):
        await asyncio.gather(*(one(n) for n in range(chunk, min(stop, chunk + 5000))))


async def _page_ms(client, url: str, repeat: int = 25) -> tuple[float, list[float]]:
    for _ in range(3):
        response = await client.get(url)
        assert response.status_code == 200, (url, response.status_code)
    times = []
    for _ in range(repeat):
        with Stopwatch() as sw:
            await client.get(url)
        times.append(sw.seconds * 1000)
    return statistics.median(times), times


async def bench_pages(site: Site, sizes: list[int], session_events: int) -> list[Row]:
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    from coordination import AgentCoordinator, EventType

    client = AsyncClient()
    await sync_to_async(client.force_login)(site.user)
    rows, done = [], 0
    baseline = None
    for size in sizes:
        await _populate_sessions(site.redis_url, site.namespace, done, size)
        done = size
        median, times = await _page_ms(client, "/sessions/")
        baseline = baseline or median
        rows.append(
            Row(
                f"/sessions/ with {size:,} sessions",
                median,
                baseline,
                "ms",
                higher_is_better=False,
                target="<= 1.5x of the smallest",
                spread=f"p90 {percentile(times, 90):.1f} ms, n={len(times)}",
            )
        )
    big = AgentCoordinator(
        "big-session", site.redis_url, namespace=site.namespace, stream_maxlen=session_events * 2
    )
    small = AgentCoordinator("small-session", site.redis_url, namespace=site.namespace)
    for n in range(100):
        await small.publish(EventType.MESSAGE, {"n": n})
    sem = asyncio.Semaphore(32)

    async def one(n):
        async with sem:
            await big.publish(EventType.MESSAGE, {"n": n})

    for chunk in range(0, session_events, 5000):
        await asyncio.gather(*(one(n) for n in range(chunk, min(session_events, chunk + 5000))))
    small_ms, _ = await _page_ms(client, "/sessions/small-session/")
    big_ms, times = await _page_ms(client, "/sessions/big-session/")
    rows.append(
        Row(
            f"session page with {session_events:,} events",
            big_ms,
            small_ms,
            "ms",
            higher_is_better=False,
            target="<= 1.5x of 100 events",
            spread=f"100 events: {small_ms:.1f} ms; p90 {percentile(times, 90):.1f} ms",
        )
    )
    return rows


def Server(site: Site) -> AsgiServer:  # noqa: N802
    return AsgiServer(site.env).start()


async def bench_websocket(
    site: Site, server: Server, rate: int, seconds: float, clients: int = 10
) -> Row:
    from coordination import AgentCoordinator, EventType

    session_id = f"ws-{rate}-{int(time.time())}"
    coord = AgentCoordinator(session_id, site.redis_url, namespace=site.namespace)
    first = await coord.publish(EventType.MESSAGE, {"t0": time.time(), "n": -1})
    cookie = await asyncio.to_thread(site.session_cookie)
    origin = f"http://127.0.0.1:{server.port}"
    total = int(rate * seconds)
    received: list[dict[str, float]] = [dict() for _ in range(clients)]
    latencies: list[float] = []

    async def client(i):
        url = f"ws://127.0.0.1:{server.port}/ws/session/{session_id}/"
        async with websockets.connect(
            url, origin=origin, additional_headers={"Cookie": cookie}, max_size=None
        ) as ws:
            await ws.send(json.dumps({"resume": first.id}))
            if i == clients - 1:
                ready.set()
            while len(received[i]) < total:
                message = await asyncio.wait_for(ws.recv(), 10)
                now = time.time()
                ids = EVENT_ID.findall(message)
                stamps = T0.findall(message)
                for event_id, t0 in zip(ids, stamps, strict=False):
                    if event_id in received[i]:
                        received[i][event_id + "#dup"] = 1
                    received[i][event_id] = now
                    latencies.append((now - float(t0)) * 1000)

    ready = asyncio.Event()
    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    await ready.wait()
    await asyncio.sleep(0.5)  # the last client's resume message is handled before we publish
    await publish_at_rate(coord, rate, total)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, Exception)]
    lost = sum(max(0, total - len([k for k in r if not k.endswith("#dup")])) for r in received)
    dups = sum(len([k for k in r if k.endswith("#dup")]) for r in received)
    return Row(
        f"publish -> {clients} websockets at {rate}/s",
        percentile(latencies, 99),
        None,
        "ms p99",
        higher_is_better=False,
        target="p99 <= 50 ms at 1000/s, 0 lost",
        spread=f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms, lost {lost}, duplicated {dups}, "
        f"errors {len(errors)}, n={total}x{clients}",
        extra={
            "p50_ms": percentile(latencies, 50),
            "lost": lost,
            "duplicated": dups,
            "errors": [repr(e) for e in errors],
        },
    )
