"""The dashboard's handles on the coordination core, configured from Django settings."""

from __future__ import annotations

from django.conf import settings

from .core import AgentCoordinator, AtomicOperations, SessionIndex


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
