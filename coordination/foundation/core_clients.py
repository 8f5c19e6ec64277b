"""The dashboard's handles on the coordination core, configured from Django settings."""

from __future__ import annotations

from functools import cache

from django.conf import settings

from coordination.core import AgentCoordinator, AtomicOperations, DecisionSigner, SessionIndex


def session_index() -> SessionIndex:
    return SessionIndex(
        settings.REDIS_URL,
        namespace=settings.COORDINATION_NAMESPACE,
        stale_after=settings.COORDINATION_AGENT_STALE_AFTER,
    )


def coordinator(session_id: str) -> AgentCoordinator:
    return AgentCoordinator(
        session_id, settings.REDIS_URL, namespace=settings.COORDINATION_NAMESPACE
    )


def atomic_operations() -> AtomicOperations:
    return AtomicOperations(settings.REDIS_URL, namespace=settings.COORDINATION_NAMESPACE)


@cache
def _signer(secret: str, namespace: str) -> DecisionSigner:
    return DecisionSigner.from_secret(secret, namespace)


def decision_signer() -> DecisionSigner:
    """Signs the decisions people make here; agents check them with its ``public_key``."""
    return _signer(settings.SECRET_KEY, settings.COORDINATION_NAMESPACE)


async def read_state(session_id: str, max_keys: int) -> tuple[dict[str, str], dict[str, str], int]:
    """The raw state and versions hashes (at most ``max_keys`` keys) and the number of keys.
    Read raw, not through ``get_state_versions``, so one malformed value (written straight into
    Redis) is shown as such instead of failing the whole read."""
    coord = coordinator(session_id)
    keys = coord.keys.session(session_id)
    total = await coord.call(coord.redis.hlen(keys.state))
    if total <= max_keys:
        values, versions = await coord.read_hashes(keys.state, keys.versions)
        return values, versions, len(values)
    _, values = await coord.call(coord.redis.hscan(keys.state, 0, count=max_keys))
    names = sorted(values)[:max_keys]
    values = {k: values[k] for k in names}
    found = await coord.call(coord.redis.hmget(keys.versions, names)) if names else []
    return values, {k: v for k, v in zip(names, found, strict=True) if v is not None}, total
