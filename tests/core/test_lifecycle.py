"""Who closes what: a core object closes only what it owns; the client shared per event loop
is closed with its loop (so a test or ``asyncio.run`` leaves no socket open)."""

from __future__ import annotations

import asyncio

import redis

from coordination import AgentCoordinator, EventType


def _connected(redis_server_url: str, client_id: int) -> bool:
    with redis.Redis.from_url(redis_server_url, decode_responses=True) as admin:
        return bool(admin.client_list(client_id=[client_id]))


def test_the_shared_client_is_closed_with_its_loop(redis_server_url, namespace):
    loop = asyncio.new_event_loop()
    coord = AgentCoordinator("life-1", redis_server_url, namespace=namespace)

    async def use() -> int:
        await coord.publish(EventType.MESSAGE, {"n": 1})
        return await coord.redis.client_id()

    client_id = loop.run_until_complete(use())
    assert _connected(redis_server_url, client_id)
    loop.close()
    assert not _connected(redis_server_url, client_id)


def test_closing_an_object_leaves_the_shared_client_to_the_others(redis_server_url, namespace):
    async def scenario() -> None:
        first = AgentCoordinator("life-2", redis_server_url, namespace=namespace)
        second = AgentCoordinator("life-3", redis_server_url, namespace=namespace)
        await first.publish(EventType.MESSAGE, {"n": 1})
        client_id = await second.redis.client_id()
        async with first:  # __aexit__ is aclose()
            pass
        await second.publish(EventType.MESSAGE, {"n": 2})  # the shared pool still works
        assert second.redis is first.redis
        assert await second.redis.client_id() == client_id
        assert _connected(redis_server_url, client_id)

    asyncio.run(scenario())


def test_a_client_given_by_the_caller_stays_the_callers(redis_server_url, namespace):
    async def scenario() -> None:
        import redis.asyncio as aioredis

        mine = aioredis.Redis.from_url(redis_server_url, decode_responses=True)
        coord = AgentCoordinator("life-4", client=mine, namespace=namespace)
        await coord.publish(EventType.MESSAGE, {"n": 1})
        await coord.aclose()
        assert await mine.ping()  # still open: closing it is the caller's call
        await mine.aclose()

    asyncio.run(scenario())
