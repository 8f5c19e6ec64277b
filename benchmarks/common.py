"""Shared benchmark plumbing: Redis, namespaces, timing, result rows."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field

import redis

from coordination.devtools.embedded_redis import EmbeddedRedis


@dataclass
class Row:
    name: str
    ours: float
    baseline: float | None
    unit: str
    higher_is_better: bool = True
    target: str = ""
    spread: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.baseline:
            return None
        return self.ours / self.baseline if self.higher_is_better else self.baseline / self.ours

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def redis_url() -> tuple[str, EmbeddedRedis | None]:
    url = os.environ.get("REDIS_URL")
    if url:
        try:
            redis.Redis.from_url(url, socket_timeout=2).ping()
            return url, None
        except (OSError, redis.RedisError):
            pass
    server = EmbeddedRedis().start()
    return server.url, server


def new_namespace() -> str:
    return f"bench-{uuid.uuid4().hex[:10]}"


def drop_namespace(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=5000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    client.close()


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):,.0f} (min {min(values):,.0f}, max {max(values):,.0f}, n={len(values)})"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Stopwatch:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


async def publish_at_rate(coordinator, rate: int, total: int) -> None:
    """Publish ``total`` events carrying their send time (``t0``), paced at ``rate`` per second."""
    from coordination import EventType

    start = time.perf_counter()
    for n in range(total):
        await coordinator.publish(EventType.MESSAGE, {"t0": time.time(), "n": n})
        delay = start + (n + 1) / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
