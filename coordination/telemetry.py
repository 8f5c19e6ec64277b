"""This process's share of the figures ``/metrics`` reports.

Scrapes reach any one of several worker processes, so every figure is kept in Redis: each
process reports its open websockets every few seconds (the relay loop calls ``report``), and
adds the Redis failures it saw to a shared counter once Redis answers again.
"""

from __future__ import annotations

from .core import RedisUnavailable, SessionIndex
from .core.connection import redis_failures


class OpenWebsockets:
    """Websockets accepted by this process and not yet closed."""

    def __init__(self) -> None:
        self.count = 0

    def opened(self) -> None:
        self.count += 1

    def closed(self) -> None:
        self.count -= 1


open_websockets = OpenWebsockets()


async def report(index: SessionIndex, worker_id: str) -> None:
    failures = redis_failures.take()
    try:
        await index.report_worker(worker_id, {"websockets": open_websockets.count})
        if failures:
            await index.add_to_counter("redis_errors", failures)
    except RedisUnavailable:
        redis_failures.give_back(failures)
        raise


async def count_intervention(index: SessionIndex, action: str, outcome: str) -> None:
    """Interventions by action and outcome; a failure to count never fails the intervention."""
    try:
        await index.add_to_counter(f"interventions:{action}:{outcome}")
    except RedisUnavailable:
        pass
