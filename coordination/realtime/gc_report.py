"""A diagnostic for the server process, off unless asked for: how long each generation's
garbage collections take (``gc.callbacks``) and which objects reach generation 2.

``COORDINATION_GC_REPORT=<path>`` times every collection and rewrites a JSON summary at
``<path>`` every 2 s. ``COORDINATION_GC_PROMOTED=<seconds>[,<window>]`` adds,
that many seconds after start-up, a census of what was promoted to generation 2 in the next
``window`` seconds (1 by default): everything is frozen first (``gc.freeze``), so what
generation 2 holds at the end arrived meanwhile; then it is unfrozen. Used by ``benchmarks/fanout.py`` (issue 18: a full collection
with 1,000 open sockets took 115-335 ms, the tail of ``/healthz``).
"""

from __future__ import annotations

import collections
import gc
import json
import os
import threading
import time

REPORT_ENV = "COORDINATION_GC_REPORT"
PROMOTED_ENV = "COORDINATION_GC_PROMOTED"


class GcTimer:
    def __init__(self, path: str) -> None:
        self.path = path
        self.started = time.monotonic()
        self._since: float | None = None
        self.counts = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]
        self.full: list[dict] = []  # every generation-2 collection: when, how long, how big
        self.census: dict = {}

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._since = time.perf_counter()
            return
        if self._since is None:
            return
        ms = (time.perf_counter() - self._since) * 1000
        self._since = None
        generation = info["generation"]
        self.counts[generation] += 1
        self.total_ms[generation] += ms
        self.max_ms[generation] = max(self.max_ms[generation], ms)
        if generation == 2:
            self.full.append(
                {
                    "at_s": round(time.monotonic() - self.started, 2),
                    "ms": round(ms, 1),
                    "collected": info["collected"],
                }
            )

    def take_census(self, delay: float, window: float) -> None:
        time.sleep(delay)
        sizes = [len(gc.get_objects(g)) for g in range(3)]
        held = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        counts = list(self.counts)
        gc.freeze()
        time.sleep(window)
        promoted = gc.get_objects(2)
        types = collections.Counter(type(o).__qualname__ for o in promoted)
        gc.unfreeze()
        self.census = {
            "after_s": delay,
            "generation_sizes_before": sizes,
            "window_s": window,
            "promoted": len(promoted),
            "collections_meanwhile": [b - a for a, b in zip(counts, self.counts, strict=True)],
            "types": types.most_common(40),
            "held": held.most_common(40),
        }
        del promoted

    def write_every(self, seconds: float) -> None:
        # uvicorn ends on the signal it was stopped with (re-raised after its shutdown), so
        # an atexit hook would not run: the report is rewritten every few seconds instead
        while True:
            time.sleep(seconds)
            self.write()

    def write(self) -> None:
        report = {
            "seconds": round(time.monotonic() - self.started, 1),
            "started_monotonic": self.started,
            "threshold": gc.get_threshold(),
            "collections": self.counts,
            "total_ms": [round(t, 1) for t in self.total_ms],
            "max_ms": [round(t, 1) for t in self.max_ms],
            "full": self.full,
            "census": self.census,
        }
        with open(self.path, "w") as out:
            json.dump(report, out)


def install_from_env() -> GcTimer | None:
    """Start the diagnostic if ``COORDINATION_GC_REPORT`` names a file; otherwise nothing."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return None
    timer = GcTimer(path)
    gc.callbacks.append(timer)
    threading.Thread(target=timer.write_every, args=(2.0,), daemon=True).start()
    census = os.environ.get(PROMOTED_ENV)
    if census:
        delay, _, window = census.partition(",")
        threading.Thread(
            target=timer.take_census, args=(float(delay), float(window or 1)), daemon=True
        ).start()
    return timer
