"""Redis goes away while a supervisor watches: a clear 503 on pages, the live indicator shows
disconnected, and everything recovers without a reload when Redis returns."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import expect

from coordination import AgentCoordinator, EventType
from coordination.devtools.embedded_redis import EmbeddedRedis, free_port

from ..browser.conftest import LiveServer, login

pytestmark = pytest.mark.browser


def test_dashboard_survives_redis_going_away(server_env, chromium, tmp_path, figures):
    port = free_port()
    private = EmbeddedRedis(tmp_path / "r", port, "--appendonly", "yes").start()
    env = {**server_env, "REDIS_URL": private.url}
    server = LiveServer(env).start()
    context = chromium.new_context()
    try:
        page = context.new_page()
        login(page, server.url, "alice")

        def publish(n):
            async def go():
                coord = AgentCoordinator(
                    "down-1", private.url, namespace=env["COORDINATION_NAMESPACE"]
                )
                try:
                    return await coord.publish(EventType.MESSAGE, {"n": n})
                finally:
                    await coord.aclose()

            # Playwright's sync API holds this thread's event loop; publish from another thread.
            with ThreadPoolExecutor(1) as pool:
                return pool.submit(asyncio.run, go()).result()

        publish(0)
        page.goto(f"{server.url}/sessions/down-1/")
        indicator = page.locator("[data-live-indicator]")
        expect(indicator).to_have_attribute("data-state", "connected")

        private.stop()
        expect(indicator).to_have_attribute("data-state", "disconnected", timeout=15_000)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{server.url}/healthz", timeout=5)
        assert info.value.code == 503

        private = EmbeddedRedis(tmp_path / "r", port, "--appendonly", "yes").start()
        publish(1)  # published before the page reconnects: the replay must bring it
        expect(indicator).to_have_attribute("data-state", "connected", timeout=60_000)
        expect(page.locator("#timeline .event")).to_have_count(2, timeout=15_000)
        publish(2)
        expect(page.locator("#timeline .event")).to_have_count(3)
    finally:
        context.close()
        server.stop()
        private.stop()
    figures(
        "Redis unavailable while a supervisor watches",
        "Redis stopped and restarted under an open session page",
        "indicator went to disconnected, /healthz 503, page recovered without a reload and showed the missed event once",
    )
