"""This process's share of the figures ``/metrics`` reports.

Scrapes reach any one of several worker processes, so every figure is kept in Redis: each
process reports its open websockets every few seconds (the relay loop calls ``report``), and
adds the Redis failures it saw to a shared counter once Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from coordination.core import RedisUnavailable, SessionIndex
from coordination.core.connection import redis_failures
from coordination.foundation.core_clients import session_index

log = logging.getLogger(__name__)


class OpenWebsockets:
    """Websockets accepted by this process and not yet closed."""

    def __init__(self) -> None:
        self.count = 0

    def opened(self) -> None:
        self.count += 1

    def closed(self) -> None:
        self.count -= 1


open_websockets = OpenWebsockets()


def worker_name() -> str:
    """This process, as the relay lease and the metrics reports name it."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def report(index: SessionIndex, worker_id: str) -> None:
    failures = redis_failures.take()
    try:
        await index.report_worker(worker_id, {"websockets": open_websockets.count})
        if failures:
            await index.add_to_counter("redis_errors", failures)
    except RedisUnavailable:
        redis_failures.give_back(failures)
        raise


async def report_forever(interval: float = 2.0) -> None:
    """``report`` every ``interval`` seconds, for a process that runs no relay."""
    worker_id = worker_name()
    while True:
        try:
            await report(session_index(), worker_id)
        except RedisUnavailable as exc:
            log.warning("metrics report from %s skipped: %s", worker_id, exc)
        await asyncio.sleep(interval)


async def count_intervention(index: SessionIndex, action: str, outcome: str) -> None:
    """Interventions by action and outcome; a failure to count never fails the intervention."""
    try:
        await index.add_to_counter(f"interventions:{action}:{outcome}")
    except RedisUnavailable:
        pass


async def count_slow_client_cutoff(index: SessionIndex) -> None:
    """A websocket closed because its client stopped reading (its outbox was full)."""
    try:
        await index.add_to_counter("websocket_cutoffs")
    except RedisUnavailable:
        pass
