"""``manage.py serve``: what ``make run`` runs. Redis (embedded unless REDIS_URL), migrations,
a supervisor account, the ASGI server and the demo agents; Ctrl-C stops everything it started."""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from coordination.core import RedisUnavailable, check_connection
from coordination.core.connection import redact_url
from coordination.core.signing import DECISION_KEY_ENV
from coordination.devtools.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from coordination.devtools.processes import UVICORN_WS_ARGS, uvicorn_proxy_args
from coordination.foundation import redis_acl
from coordination.foundation.core_clients import decision_signer

# how often serve looks at the demo agents, and how many restarts it allows in a window
AGENTS_CHECK_SECONDS = 1.0
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


def _start_agents(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "manage.py", "simulate_agents"], env=env)


class Command(BaseCommand):
    help = "Serve the dashboard with live demo agents (starts an embedded Redis unless REDIS_URL is set)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--no-agents",
            action="store_true",
            default=os.environ.get("DEMO_AGENTS", "1").lower() in {"0", "false", "no", "off"},
            help="do not start the demo agents (or set DEMO_AGENTS=0)",
        )

    def handle(self, *args, host: str, port: int, no_agents: bool, **options):
        # Ctrl-C is how serve is stopped. A shell starts background jobs with SIGINT ignored,
        # and Python keeps an ignored SIGINT ignored, so serve started from a script would not
        # stop on it (seen: the serve test hung when the suite ran as a background job).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        embedded = None
        children: list[subprocess.Popen] = []
        self._check_port_free(host, port)
        try:
            redis_url = os.environ.get("REDIS_URL")
            agents_url = redis_url
            redis_note = (
                "The demo agents share REDIS_URL with the dashboard. To give agents a Redis user "
                "that can coordinate and nothing else:\n  .venv/bin/python manage.py redis_acl "
                "| redis-cli -u <admin URL>   (see docs/security.md)"
            )
            if not redis_url:
                try:
                    embedded = EmbeddedRedis(Path(settings.VAR_DIR) / "redis").start()
                except EmbeddedRedisError as exc:
                    self._fail(f"could not start the embedded Redis: {exc}")
                self.stdout.write(
                    f"Started embedded Redis at {embedded.url} (data in var/redis, not persisted)"
                )
                redis_url, agents_url, redis_note = self._redis_users(embedded.url)
            try:
                asyncio.run(check_connection(redis_url))
            except RedisUnavailable as exc:
                self._fail(str(exc))
            env = {**os.environ, "REDIS_URL": redis_url}

            call_command("migrate", interactive=False, verbosity=0)
            login = self._ensure_supervisor()

            children.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "coordinator_site.asgi:application",
                        "--host",
                        host,
                        "--port",
                        str(port),
                        "--lifespan",
                        "on",  # the lifespan starts the relay that feeds live updates
                        "--log-level",
                        "warning",
                        *UVICORN_WS_ARGS,  # no per-socket deflate of shared frames
                        # forwarded headers only from FORWARDED_ALLOW_IPS (none by default)
                        *uvicorn_proxy_args(settings.FORWARDED_ALLOW_IPS),
                    ],
                    env=env,
                )
            )
            agents_env = None
            if not no_agents and _has_command("simulate_agents"):
                # the agents check that a person made each decision (docs/security.md)
                agents_env = {
                    **env,
                    "REDIS_URL": agents_url,
                    DECISION_KEY_ENV: decision_signer().public_key,
                }
                children.append(_start_agents(agents_env))
            url = f"http://{host}:{port}/"
            self._wait_until_healthy(children[0], url)
            self.stdout.write(self.style.SUCCESS(f"\nCoordinator is running at {url}"))
            self.stdout.write(login)
            self.stdout.write(redis_note)
            self.stdout.write(
                "Press Ctrl-C to stop the server, the agents and the embedded Redis.\n"
            )
            signal.signal(signal.SIGTERM, _interrupt)
            self._watch(children, agents_env)
        except KeyboardInterrupt:
            self.stdout.write("\nStopping…")
        finally:
            # A second Ctrl-C (or SIGTERM) must not cut the clean-up short and leave Redis running.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            for child in children:
                if child.poll() is None:
                    child.terminate()
            for child in children:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
            if embedded is not None:
                embedded.stop()

    def _check_port_free(self, host: str, port: int) -> None:
        """Fail at once, naming PORT, when something already listens where the server would."""
        probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        # as uvicorn binds: a port left in TIME_WAIT by a server that just stopped is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                self._fail(
                    f"port {port} on {host} is taken (another server is listening there): "
                    f"stop it, or choose another port with PORT, e.g. PORT={port + 1} make run"
                )
            self._fail(f"cannot listen on {host}:{port} ({exc.strerror}): set HOST and PORT")
        finally:
            probe.close()

    def _watch(self, children: list[subprocess.Popen], agents_env: dict | None) -> None:
        """Wait on the server; a demo fleet that dies meanwhile is reported and started again
        (its exit is collected, so no zombie is left), unless it keeps dying."""
        restarts: list[float] = []
        while True:
            try:
                children[0].wait(timeout=AGENTS_CHECK_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            else:
                code = children[0].returncode
                self.stderr.write(f"error: the ASGI server exited with code {code}; stopping.")
                raise SystemExit(1)
            if agents_env is None or len(children) < 2 or children[1].poll() is None:
                continue
            code = children[1].returncode
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
            if len(restarts) > MAX_RESTARTS:
                self.stderr.write(
                    f"error: the demo agents exited with code {code} again ({MAX_RESTARTS} "
                    f"restarts in {RESTART_WINDOW:g} s); not restarting them. The dashboard "
                    "keeps running; see their output above."
                )
                agents_env = None
                continue
            self.stderr.write(
                f"warning: the demo agents exited with code {code}; restarting them "
                f"(restart {len(restarts)} of at most {MAX_RESTARTS} per {RESTART_WINDOW:g} s)."
            )
            children[1] = _start_agents(agents_env)

    def _wait_until_healthy(
        self, server: subprocess.Popen, url: str, timeout: float = 60.0
    ) -> None:
        probe = url.replace("://0.0.0.0:", "://127.0.0.1:") + "healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                self._fail(
                    f"the ASGI server exited with code {server.returncode} (is {url} taken? "
                    "choose another port with PORT)"
                )
            try:
                with urllib.request.urlopen(probe, timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self._fail(f"the ASGI server did not answer {probe} within {timeout:g} s")

    def _redis_users(self, admin_url: str) -> tuple[str, str, str]:
        """The embedded Redis gets an agents' user (coordination only) and a dashboard user,
        with new random passwords, and its default user a password: the way an operator is
        meant to run Redis (docs/security.md). Returns (dashboard URL, agents' URL, a note)."""
        directory = Path(settings.VAR_DIR) / "redis-acl"
        try:
            creds = redis_acl.lock_down(
                admin_url, settings.COORDINATION_NAMESPACE, directory=directory
            )
        except Exception as exc:  # a refused ACL command or a vanished server: say which
            self._fail(f"could not create the Redis users: {exc}")
        note = (
            f"Redis users: the dashboard connects as {redact_url(creds.dashboard_url)},\n"
            f"the demo agents as {redact_url(creds.agents_url)} (coordination only: no relay,\n"
            "cache or channel-layer keys, no pub/sub, no admin commands; see docs/security.md).\n"
            f"Agent URL: {_shown(creds.file('agents'))} (mode 0600); dashboard and admin URLs: "
            f"{_shown(creds.file('dashboard'))}, {_shown(creds.file('admin'))}."
        )
        return creds.dashboard_url, creds.agents_url, note

    def _ensure_supervisor(self) -> str:
        User = get_user_model()
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "supervisor")
        if User.objects.filter(is_superuser=True).exists():
            return "Log in with your existing supervisor account (manage.py changepassword to reset it)."
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD") or secrets.token_urlsafe(12)
        user = User.objects.create_superuser(
            username, os.environ.get("DJANGO_SUPERUSER_EMAIL", ""), password
        )
        _join_supervisors(user)
        if "DJANGO_SUPERUSER_PASSWORD" in os.environ:
            return f"Log in as {username!r} with the password from DJANGO_SUPERUSER_PASSWORD."
        return (
            f"Created the supervisor account {username!r} with the password {password!r}\n"
            "(shown only this once; change it with: .venv/bin/python manage.py changepassword "
            f"{username})"
        )

    def _fail(self, message: str) -> None:
        self.stderr.write(f"error: {message}")
        raise SystemExit(2)


def _join_supervisors(user) -> None:
    from django.contrib.auth.models import Group

    group = Group.objects.filter(name="supervisors").first()
    if group is not None:
        user.groups.add(group)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _shown(path: Path | None) -> str:
    """A path relative to the working directory when it lies below it (var/...)."""
    if path is None:
        return "-"
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _has_command(name: str) -> bool:
    return (Path(__file__).parent / f"{name}.py").exists()
