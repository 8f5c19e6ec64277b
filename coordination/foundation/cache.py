"""Django's Redis cache on any Redis URL the core understands (one server, Cluster, Sentinel).

Django's own backend builds a plain connection pool from the URL; this one asks the core's
connection module for the client, so ``redis+cluster://`` and ``redis+sentinel://`` work too.
The cache holds only small single-key values (the login throttle), so a Cluster is no problem.
"""

from __future__ import annotations

import threading

from django.core.cache.backends.redis import RedisCache, RedisCacheClient

from coordination.core.connection import new_sync_client


class CoordinationCacheClient(RedisCacheClient):
    def __init__(self, servers, **options) -> None:
        super().__init__(servers, **options)
        self._client_lock = threading.Lock()
        self._shared = None

    def get_client(self, key=None, *, write=False):
        if self._shared is None:
            with self._client_lock:
                if self._shared is None:
                    self._shared = new_sync_client(self._servers[0])
        return self._shared


class CoordinationCache(RedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = CoordinationCacheClient
