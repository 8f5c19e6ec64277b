"""``manage.py serve`` (what ``make run`` runs), issue 19: a taken port is named with ``PORT``;
a demo fleet that dies is reported, collected (no zombie) and started again; log lines are text
on a terminal and JSON otherwise, each printed once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from ..conftest import delete_namespace, running_serve, serve_that_fails
from ..waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_a_taken_port_is_named_with_PORT(tmp_path, redis_server_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve_that_fails(tmp_path, REDIS_URL=redis_server_url, PORT=str(port))
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is taken" in result.stderr
    assert f"PORT={port + 1} make run" in result.stderr
    assert "Traceback" not in result.stderr


def _agents_of(serve_pid: int) -> list[int]:
    """The pids of serve's children running simulate_agents (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == serve_pid and b"simulate_agents" in cmdline:
            found.append(int(entry.name))
    return found


def test_serve_restarts_a_demo_fleet_that_died(tmp_path, redis_server_url):
    from coordination.devtools.processes import free_port

    namespace = f"test-serve-{uuid.uuid4().hex[:8]}"
    try:
        with running_serve(
            tmp_path,
            PORT=str(free_port()),
            REDIS_URL=redis_server_url,
            COORDINATION_NAMESPACE=namespace,
            DJANGO_SUPERUSER_PASSWORD="serve-watch-password-1",
        ) as (serve, output):
            first = wait_until(lambda: _agents_of(serve.pid), "the demo agents")[0]
            os.kill(first, 9)
            second = wait_until(
                lambda: [p for p in _agents_of(serve.pid) if p != first], "restarted agents"
            )
            assert second
            text = "".join(output)
            assert "the demo agents exited with code -9; restarting them" in text
            # the dead one was collected: no zombie left behind
            assert not Path(f"/proc/{first}").exists()
            assert serve.poll() is None
    finally:
        client = redis.Redis.from_url(redis_server_url, decode_responses=True)
        delete_namespace(client, namespace)
        client.close()


def _log_once(env: dict[str, str], stderr) -> None:
    code = (
        "import django, logging, warnings; django.setup(); "
        "logging.getLogger('django.request').warning('Not Found: /probe-%s', 'x'); "
        "warnings.warn('probe-w: a library warning')"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "coordinator_site.settings"},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        timeout=60,
        check=True,
    )


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_logs_are_text_on_a_terminal_json_otherwise_and_printed_once(tmp_path, terminal):
    env = {k: v for k, v in os.environ.items() if k != "LOG_FORMAT"}
    env.update(COORDINATION_VAR_DIR=str(tmp_path), DEBUG="true")
    if terminal:
        primary, secondary = os.openpty()
        try:
            _log_once(env, secondary)
            os.close(secondary)
            chunks = []
            while True:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # EIO: the other end is closed and drained
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(primary)
        text = b"".join(chunks).decode()
    else:
        path = tmp_path / "stderr.txt"
        with path.open("w") as file:
            _log_once(env, file)
        text = path.read_text()
    lines = [line for line in text.splitlines() if "probe-x" in line]
    assert len(lines) == 1, text  # once, not once per handler
    warned = [line for line in text.splitlines() if "probe-w" in line]
    assert len(warned) == 1, text  # a Python warning too, in the same format
    if terminal:
        assert " WARNING django.request: Not Found: /probe-x" in lines[0]
        assert " WARNING py.warnings: " in warned[0]
    else:
        assert lines[0].startswith("{") and '"logger": "django.request"' in lines[0]
        assert warned[0].startswith("{") and '"logger": "py.warnings"' in warned[0]
