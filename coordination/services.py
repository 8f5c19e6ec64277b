"""The dashboard's handles on the coordination core, configured from Django settings."""

from __future__ import annotations

from functools import cache

from django.conf import settings

from .core import AgentCoordinator, AtomicOperations, DecisionSigner, SessionIndex


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
