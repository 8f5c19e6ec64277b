"""The server's garbage-collector settings (coordination/realtime/gc_policy.py, issue 18): set
once the ASGI lifespan start-up has completed, left alone when switched off."""

from __future__ import annotations

import asyncio
import gc

import pytest

from coordination.realtime import gc_policy


@pytest.fixture
def restore_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def _start(monkeypatch, value: str | None) -> list[dict]:
    if value is None:
        monkeypatch.delenv(gc_policy.TUNING_ENV, raising=False)
    else:
        monkeypatch.setenv(gc_policy.TUNING_ENV, value)
    seen: list[dict] = []

    async def lifespan_app(scope, receive, send):
        # what the tuning sees before the start-up completes: Python's settings untouched
        seen.append({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()})
        await send({"type": "lifespan.startup.complete"})

    async def sent(message):
        seen.append({"message": message["type"]})

    app = gc_policy.TuneAfterStartup(lifespan_app)
    asyncio.run(app({"type": "lifespan"}, None, sent))
    return seen


def test_startup_freezes_survivors_and_makes_full_collections_rare(monkeypatch, restore_gc):
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    seen = _start(monkeypatch, None)
    assert seen[0] == {"threshold": (700, 10, 10), "frozen": 0}
    assert seen[1] == {"message": "lifespan.startup.complete"}  # still forwarded
    assert gc.get_threshold() == (700, 10, gc_policy.FULL_COLLECTION_EVERY)
    assert gc.get_freeze_count() > 1000  # the modules, functions and classes loaded so far


def test_switched_off_it_leaves_pythons_defaults(monkeypatch, restore_gc):
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    _start(monkeypatch, "off")
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0


def test_http_and_websocket_scopes_pass_through(monkeypatch, restore_gc):
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    calls = []

    async def app(scope, receive, send):
        calls.append(scope["type"])

    for kind in ("http", "websocket"):
        asyncio.run(gc_policy.TuneAfterStartup(app)({"type": kind}, None, None))
    assert calls == ["http", "websocket"] and gc.get_threshold() == (700, 10, 10)
