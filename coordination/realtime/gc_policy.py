"""The garbage collector's settings in a server process (issue 18: 1,000 open pages, /healthz
p99 under 100 ms), applied by ``coordinator_site/asgi.py`` once the ASGI lifespan has started.

What was measured (``benchmarks/fanout.py``, ``COORDINATION_GC_REPORT``): a full (generation-2)
collection walks every tracked object of the process, ~100k left from start-up (Django,
templates, modules) and ~140 per open socket (the ASGI middleware chain's suspended
coroutines, uvicorn's and websockets' per-connection state, the scope): 54-63 ms with no page
open, 135-212 ms with 1,000, each one a pause of the event loop that answers /healthz. With
the default thresholds three came back to back (4-5 s apart) while 1,000 pages connected, and
in 5 of 10 runs one more within the 30 s while the pages were only being updated (what reaches
generation 2 then is mostly per-socket and short of a cycle: uvicorn's keep-alive ping timer
and frame, ~8,000 objects per 20 s for 1,000 sockets).

So, once started: collect, then freeze what is left (``gc.freeze``: start-up's objects are
never walked again; 54-63 ms -> 26-38 ms for a full collection with no page open), and allow a
full collection only after ``FULL_COLLECTION_EVERY`` collections of generation 1 instead of 10
(Python's own rule still waits for generation 2 to have grown by a quarter). Memory stays
bounded: full collections still come, about every 10 minutes under the benchmark's load
(~1 generation-1 collection a second), and reclaim what reached generation 2 meanwhile
(~1,000-1,600 objects per 20 s in the collections measured); objects without cycles are freed
at once as always. ``COORDINATION_GC_TUNING=off`` leaves Python's defaults (for comparison).
"""

from __future__ import annotations

import gc
import os

TUNING_ENV = "COORDINATION_GC_TUNING"
FULL_COLLECTION_EVERY = 600  # generation-1 collections between two full ones (Python: 10)


def enabled() -> bool:
    return os.environ.get(TUNING_ENV, "on").lower() not in {"0", "off", "false", "no"}


def tune_after_startup() -> bool:
    """Collect, freeze the survivors, make full collections rare; False when switched off."""
    if not enabled():
        return False
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    return True


class TuneAfterStartup:
    """ASGI middleware: applies ``tune_after_startup`` when the server's lifespan start-up has
    completed (the relay and everything imported for it are in place by then)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)

        async def sending(message):
            if message.get("type") == "lifespan.startup.complete":
                tune_after_startup()
            await send(message)

        return await self.app(scope, receive, sending)
