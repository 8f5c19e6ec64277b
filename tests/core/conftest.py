from __future__ import annotations

import pytest

from coordination import AgentCoordinator, AtomicOperations, SessionIndex
from coordination.core.connection import is_cluster, new_client

from ..conftest import redis_url_of_kind


@pytest.fixture
def make(redis_url, namespace):
    """Build core objects bound to the test Redis and this test's namespace."""

    class Factory:
        def coordinator(self, session_id: str = "s-1", **kw) -> AgentCoordinator:
            return AgentCoordinator(session_id, redis_url, namespace=namespace, **kw)

        def atomic(self, **kw) -> AtomicOperations:
            return AtomicOperations(redis_url, namespace=namespace, **kw)

        def index(self, **kw) -> SessionIndex:
            return SessionIndex(redis_url, namespace=namespace, **kw)

    return Factory()


# Every core test runs on one Redis server and on a Redis Cluster.
redis_url = pytest.fixture(params=["single", "cluster"])(redis_url_of_kind)


def left_after_clear(coord) -> set[str]:
    """The keys of a session that a clear leaves: none on one server through the core's own
    client (no operation ids there unless the caller gives idempotency keys); on a Cluster,
    where a script may be re-sent, the outcomes of its recent operations (so a retry across the
    clear does not act again) and the outbox's numbering, both expiring (test_control checks
    what they hold)."""
    keys = coord.keys.session(coord.session_id)
    return {keys.ops, keys.outbox} if is_cluster(coord.redis) else set()


# For the tests of what only a Cluster has (the two-step index): ``make``, ``namespace`` and
# ``admin`` then all point at the Cluster.
cluster_only = pytest.mark.parametrize("redis_url", ["cluster"], indirect=True)


@pytest.fixture
async def admin(redis_url):
    """A plain client of the test's Redis, for reading and arranging keys around the core."""
    client = new_client(redis_url)
    yield client
    await client.aclose()
