"""ASGI lifespan: each worker process starts the relay (only one of them becomes active)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from django.conf import settings

log = logging.getLogger(__name__)


def _log_end(task: asyncio.Task) -> None:
    """The relay restarts its own loop after a failure, so its task ends only at shutdown; if it
    ends otherwise, say so (``/healthz`` then answers 503 with ``"relay": "stopped"``)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("%s ended: %r", task.get_name(), exc, exc_info=exc)


class LifespanRelay:
    def __init__(self, app) -> None:
        self.app = app
        self.task: asyncio.Task | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                from coordination.realtime import relay as live  # imported once Django is set up

                if getattr(settings, "COORDINATION_RELAY", True):
                    self.relay = live.Relay()
                    self.task = asyncio.create_task(self.relay.run(), name="coordination-relay")
                    live.register_process_relay(self.relay, self.task)
                else:
                    # no relay here, but /metrics still needs this process's websockets
                    from coordination.foundation.telemetry import report_forever

                    self.task = asyncio.create_task(report_forever(), name="coordination-report")
                    live.register_process_relay(None, self.task)
                self.task.add_done_callback(_log_end)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.task is not None and hasattr(self, "relay"):
                    with contextlib.suppress(asyncio.CancelledError):
                        await self.relay.stop(self.task)
                elif self.task is not None:
                    self.task.cancel()  # it makes no blocking reads, so cancelling is safe
                    with contextlib.suppress(asyncio.CancelledError):
                        await self.task
                from coordination.realtime import relay as live

                live.unregister_process_relay(self.task)
                await send({"type": "lifespan.shutdown.complete"})
                return
