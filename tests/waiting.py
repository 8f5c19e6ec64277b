"""Waiting in tests: every wait has a deadline and, when it runs out, says what it waited for.

Polling is for what has no event to await (a lease running out on the server's clock, a relay
taking the lease); it never stands in for synchronisation the code offers.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

DEFAULT_TIMEOUT = 15.0


async def eventually(
    check: Callable[[], Any | Awaitable[Any]],
    what: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.01,
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy, and return that; fail
    the test after ``timeout`` seconds naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


async def lease_gone(atomic: Any, session_id: str) -> bool:
    """For ``eventually``: the session's handoff claim has run out (or was released)."""
    return await atomic.get_handoff(session_id) is None


def wait_until(condition: Callable[[], Any], what: str, *, timeout: float = 30.0) -> Any:
    """``eventually`` for plain (thread) code: poll ``condition`` until it returns something
    truthy and return that; fail after ``timeout`` seconds naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
    return value
