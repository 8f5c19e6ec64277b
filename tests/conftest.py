"""Shared fixtures: a real Redis (REDIS_URL when reachable, else an embedded server), a key
namespace per test that is deleted afterwards, and Django settings pointing at both."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from coordination.core.connection import new_sync_client
from coordination.devtools.embedded_redis import EmbeddedCluster, EmbeddedRedis

IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="run long rounds (CI enables this)")
    parser.addoption(
        "--seed",
        type=int,
        default=None,
        help="seed for the tests' randomness (Python's random per test; hypothesis when "
        "--hypothesis-seed is not given); printed in the header so a failure can be replayed",
    )


def pytest_configure(config):
    config.slow = config.getoption("--slow")
    seed = config.getoption("--seed")
    if seed is None:
        seed = int(os.environ.get("TEST_SEED") or random.SystemRandom().randrange(2**32))
    config.test_seed = seed
    # hypothesis reads its seed from this option; one seed replays the whole run
    if hasattr(config.option, "hypothesis_seed") and config.option.hypothesis_seed is None:
        config.option.hypothesis_seed = seed


def pytest_report_header(config):
    return f"test seed: {config.test_seed} (replay with --seed {config.test_seed})"


@pytest.fixture(autouse=True)
def _seeded_random(request):
    """Each test's ``random`` starts from the run's seed and the test's id."""
    random.seed(f"{request.config.test_seed}:{request.node.nodeid}")


def pytest_collection_modifyitems(config, items):
    # Browser tests last: Playwright's sync API holds an event loop while Chromium is open.
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # No skips: a test that cannot run here is a failure under CI (a skipped test proves
    # nothing, and "the browser was missing" must not turn a red run green).
    report = yield
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {report.longrepr}"
    return report


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "localhost", parts.port or 6379), timeout=1
        ):
            pass
        return redis.Redis.from_url(url, socket_timeout=2).ping()
    except (OSError, redis.RedisError):
        return False


@pytest.fixture(scope="session")
def redis_server_url():
    """One Redis server: REDIS_URL when it answers, else an embedded one."""
    url = os.environ.get("REDIS_URL")
    if url and _reachable(url):
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster_url():
    """A local 3-primary Redis Cluster, started once for the whole run."""
    with EmbeddedCluster(masters=3) as cluster:
        yield cluster.url


@pytest.fixture
def redis_url(redis_server_url):
    """The Redis a test runs against. tests/core and tests/web run on a Cluster as well."""
    return redis_server_url


def redis_url_of_kind(request) -> str:
    """For a ``redis_url`` fixture parametrized with "single" and "cluster"."""
    if request.param == "cluster":
        return request.getfixturevalue("redis_cluster_url")
    return request.getfixturevalue("redis_server_url")


@pytest.fixture(scope="session")
def _sync_clients():
    clients: dict[str, redis.Redis] = {}
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture
def redis_sync(redis_url, _sync_clients):
    """A blocking client for the test's Redis (a cluster client on a Cluster)."""
    client = _sync_clients.get(redis_url)
    if client is None:
        client = _sync_clients[redis_url] = new_sync_client(redis_url, decode_responses=True)
    return client


def delete_namespace(client: redis.Redis, namespace: str) -> None:
    """Delete only this test's keys (the shared Redis is never flushed)."""
    batch = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    for i in range(0, len(batch), 500):  # a Cluster client splits each DEL by slot itself
        client.delete(*batch[i : i + 500])


@pytest.fixture
def namespace(redis_sync):
    ns = f"test-{uuid.uuid4().hex[:12]}"
    yield ns
    delete_namespace(redis_sync, ns)


@pytest.fixture
def ns_keys(redis_sync, namespace):
    """The keys that currently exist in this test's namespace."""

    def keys() -> set[str]:
        return set(redis_sync.scan_iter(match=f"{namespace}:*", count=1000))

    return keys


def serve_that_fails(var_dir: Path, **env: str) -> subprocess.CompletedProcess:
    """``manage.py serve --no-agents`` expected to stop at once (a bad setting, a taken port):
    its exit code and output, within 60 s."""
    return subprocess.run(
        [sys.executable, "manage.py", "serve", "--no-agents"],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "COORDINATION_VAR_DIR": str(var_dir), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextlib.contextmanager
def running_serve(var_dir: Path, **env: str):
    """``manage.py serve`` started as a user starts it (no REDIS_URL or DATABASE_URL), until
    it prints its banner. Yields the process and its output (a list that keeps filling: its
    pipe is drained, since serve and uvicorn share it and a full pipe would block them). On
    the way out a serve still running is stopped the way a user does: Ctrl-C."""
    environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    environ.update(COORDINATION_VAR_DIR=str(var_dir), **env)
    serve = subprocess.Popen(
        [sys.executable, "manage.py", "serve"],
        cwd=Path(__file__).resolve().parents[1],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        for line in serve.stdout:
            output.append(line)
            if "Press Ctrl-C" in line:
                break
        threading.Thread(target=lambda: output.extend(serve.stdout), daemon=True).start()
        yield serve, output
    finally:
        if serve.poll() is None:  # a failed assertion: still stop it the way a user would
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve.kill()
