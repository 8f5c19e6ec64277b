"""Child processes started by ``serve``, the tests and the benchmarks: the ASGI server on a free
port, waited for until healthy, and stopped politely (then firmly)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def uvicorn_proxy_args(forwarded_allow_ips: str | list[str] | None) -> list[str]:
    """uvicorn's proxy options for ``FORWARDED_ALLOW_IPS``. uvicorn believes X-Forwarded-For and
    X-Forwarded-Proto from 127.0.0.1 unless told otherwise, and a local agent is a peer on
    127.0.0.1: so without configured proxies the headers are switched off outright."""
    if isinstance(forwarded_allow_ips, str):
        forwarded_allow_ips = forwarded_allow_ips.split(",")
    allowed = [item.strip() for item in forwarded_allow_ips or () if item.strip()]
    if not allowed:
        return ["--no-proxy-headers"]
    return ["--proxy-headers", "--forwarded-allow-ips", ",".join(allowed)]


# uvicorn compresses every websocket frame for every socket (permessage-deflate, a zlib stream
# per socket) when the browser offers it, and every browser does. A notice sends the same
# ~1.2 KB of markup to each open page, so with 1,000 pages the server deflated the same text
# 1,000 times: 11% of its CPU, in the event loop that also answers /healthz (issue 18). The
# extension is optional in the protocol: without it browsers take the frames uncompressed.
UVICORN_WS_ARGS = ["--ws-per-message-deflate", "false"]


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class AsgiServer:
    """``uvicorn coordinator_site.asgi:application`` on 127.0.0.1; ``start()`` waits for /healthz.
    Forwarded headers are believed only from ``env["FORWARDED_ALLOW_IPS"]`` (none when unset)."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.env = env
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> AsgiServer:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "coordinator_site.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--lifespan",
                "on",
                "--log-level",
                "warning",
                *UVICORN_WS_ARGS,
                *uvicorn_proxy_args(self.env.get("FORWARDED_ALLOW_IPS")),
            ],
            cwd=ROOT,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"uvicorn did not become healthy within {timeout:g} s")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        stop_process(self.process)
