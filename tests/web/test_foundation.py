"""The skeleton: login required, the first page, health, fail-fast on a bad Redis URL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coordination.core.keys import Keyspace
from coordination.devtools.embedded_redis import EmbeddedRedis

from ..conftest import running_serve, serve_that_fails

ROOT = Path(__file__).resolve().parents[2]


def test_embedded_redis_starts_answers_ping_and_stops():
    server = EmbeddedRedis().start()
    pid = server.process.pid
    assert server.ping()
    import redis

    assert redis.Redis.from_url(server.url).ping() is True
    server.stop()
    assert not server.ping()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_wrong_redis_url_gives_one_line_error_without_password(tmp_path):
    result = serve_that_fails(
        tmp_path,
        REDIS_URL="redis://:hunter2-secret@127.0.0.1:1/0",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Redis is unavailable at redis://:***@127.0.0.1:1/0" in lines[0]
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_core_imports_without_django_settings():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = (
        "import sys; import coordination.core; from coordination import AgentCoordinator, "
        "EventType, AtomicOperations; assert 'django' not in sys.modules, 'django was imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)


@pytest.mark.django_db
def test_pages_require_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/")


@pytest.mark.django_db
def test_login_page_is_styled_and_has_csrf(client):
    response = client.get("/login/")
    body = response.content.decode()
    assert response.status_code == 200
    assert "/static/coordination/app.css" in body
    assert "csrfmiddlewaretoken" in body
    assert "script-src 'self'" in response["Content-Security-Policy"]


@pytest.mark.django_db
def test_overview_shows_empty_state(client, supervisor):
    client.force_login(supervisor)
    response = client.get("/")
    body = response.content.decode()
    assert response.status_code == 200
    assert "No sessions yet" in body
    assert "simulate_agents" in body


@pytest.mark.django_db
def test_healthz_ok_with_redis_and_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "redis": "ok", "database": "ok"}


@pytest.mark.django_db
def test_healthz_names_redis_when_it_is_down(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["redis"] == "unavailable"
    assert response.json()["database"] == "ok"


def test_static_htmx_is_vendored_not_from_a_cdn():
    for template in (ROOT / "templates").rglob("*.html"):
        sources = re.findall(r'(?:src|href)="([^"]+)"', template.read_text())
        assert not [s for s in sources if s.startswith(("http:", "https:", "//"))], template
    assert "vendor/htmx/htmx.min.js" in (ROOT / "templates" / "base.html").read_text()
    assert (ROOT / "static" / "vendor" / "htmx" / "htmx.min.js").stat().st_size > 10_000


def test_serve_starts_embedded_redis_and_stops_everything_on_ctrl_c(tmp_path):
    import re
    import signal
    import time

    import redis

    from coordination.devtools.processes import free_port

    port = free_port()
    with running_serve(
        tmp_path, PORT=str(port), DEMO_AGENTS="0", DJANGO_SUPERUSER_PASSWORD="serve-test-password-1"
    ) as (serve, output):
        text = "".join(output)
        redis_url = re.search(r"Started embedded Redis at (\S+)", text).group(1)
        assert f"http://127.0.0.1:{port}/" in text and "DJANGO_SUPERUSER_PASSWORD" in text
        # the embedded Redis has users (docs/security.md); the admin URL is in var/redis-acl
        client = redis.Redis.from_url((tmp_path / "redis-acl" / "admin.url").read_text().strip())
        assert client.ping() is True
        # The server's lifespan started the relay that feeds live updates: it holds the lease.
        deadline = time.monotonic() + 15
        while client.get(Keyspace("coord").relay_lease) is None:
            assert time.monotonic() < deadline, "no relay took the lease"
            time.sleep(0.05)
        client.close()
        serve.send_signal(signal.SIGINT)
        try:
            assert serve.wait(timeout=30) == 0
        except subprocess.TimeoutExpired:
            pytest.fail("serve did not stop within 30 s of Ctrl-C; its output:\n" + "".join(output))
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()
    import socket

    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
