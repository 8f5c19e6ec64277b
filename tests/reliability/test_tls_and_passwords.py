"""rediss:// (TLS) and password-protected Redis work, and passwords never show in errors."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import redis

from coordination import AgentCoordinator, EventType, RedisUnavailable
from coordination.core.connection import redact_url
from coordination.devtools.embedded_redis import free_port

PASSWORD = "s3cret-pw-for-tls"


@pytest.fixture
def tls_redis(tmp_path):
    server, openssl = shutil.which("redis-server"), shutil.which("openssl")
    assert server and openssl, "this machine kind ships redis-server (with TLS) and openssl"
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            server,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            cert,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp_path,
            "--bind",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=none"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url, socket_timeout=1).ping()
            break
        except (redis.RedisError, OSError):
            assert time.monotonic() < deadline, "TLS redis-server did not start"
            time.sleep(0.05)
    yield url, port
    process.terminate()
    process.wait(timeout=10)


async def test_core_works_over_tls_with_a_password(tls_redis, figures):
    url, _ = tls_redis
    coord = AgentCoordinator("tls-1", url, namespace="tls")
    try:
        event = await coord.publish(EventType.MESSAGE, {"over": "tls"})
        assert [e.id for e in await coord.events()] == [event.id]
        await coord.set_state("k", [1, None])
        assert await coord.get_state("k") == [1, None]
    finally:
        await coord.aclose()
    figures("rediss:// with a password", "publish, read, state over TLS", "worked")


async def test_wrong_password_is_a_clear_error_that_hides_passwords(tls_redis):
    url, port = tls_redis
    wrong = url.replace(PASSWORD, "not-the-password")
    coord = AgentCoordinator("tls-2", wrong, namespace="tls")
    with pytest.raises(RedisUnavailable) as info:
        await coord.publish(EventType.MESSAGE, {})
    await coord.aclose()
    message = str(info.value)
    assert "not-the-password" not in message and PASSWORD not in message
    assert f"rediss://127.0.0.1:{port}/0" in message
    assert PASSWORD not in redact_url(url) and "***" in redact_url(url)
