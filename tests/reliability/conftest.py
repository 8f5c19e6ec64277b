"""Reliability tests record their figures; the session writes them to var/reliability-figures.md
(docs/reliability.md quotes the last run)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ..core.conftest import make  # noqa: F401  (the core factory fixture)

FIGURES: list[tuple[str, str, str]] = []
OUT = Path(__file__).resolve().parents[2] / "var" / "reliability-figures.md"


@pytest.fixture
def figures():
    def record(what: str, tried: str, held: str) -> None:
        FIGURES.append((what, tried, held))

    return record


def pytest_sessionfinish(session, exitstatus):
    if not FIGURES:
        return
    OUT.parent.mkdir(exist_ok=True)
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, slow={session.config.getoption('--slow')}",
        "",
        "| what | tried | held |",
        "|---|---|---|",
    ]
    lines += [f"| {w} | {t} | {h} |" for w, t, h in FIGURES]
    OUT.write_text("\n".join(lines) + "\n")


@pytest.fixture
def slow(request) -> bool:
    return request.config.getoption("--slow")


from ..browser.conftest import (  # noqa: E402, F401  (live servers for the fault tests)
    agent_loop,
    asgi_server,
    browser_namespace,
    chromium,
    core,
    live_database,
    server_env,
    sid,
)
