"""ASGI lifespan: each worker process starts the relay (only one of them becomes active)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from django.conf import settings

log = logging.getLogger(__name__)


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
                if getattr(settings, "COORDINATION_RELAY", True):
                    from coordination.live import Relay

                    self.relay = Relay()
                    self.task = asyncio.create_task(self.relay.run(), name="coordination-relay")
                else:
                    # no relay here, but /metrics still needs this process's websockets
                    from coordination.telemetry import report_forever

                    self.task = asyncio.create_task(report_forever(), name="coordination-report")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.task is not None and hasattr(self, "relay"):
                    with contextlib.suppress(asyncio.CancelledError):
                        await self.relay.stop(self.task)
                elif self.task is not None:
                    self.task.cancel()  # it makes no blocking reads, so cancelling is safe
                    with contextlib.suppress(asyncio.CancelledError):
                        await self.task
                await send({"type": "lifespan.shutdown.complete"})
                return
