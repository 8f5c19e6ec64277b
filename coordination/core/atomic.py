"""``AtomicOperations``: handoff claims as leases with fencing tokens, checked in Lua."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import DEFAULT_CLAIM_TTL, RedisBacked, caller_op_id, lease_ms
from .errors import NotOwner, SessionClosed, SessionTakenOver
from .keys import validate_actor, validate_agent_id, validate_session_id
from .scripts import claim_script, reassign_script, release_script, renew_script


@dataclass(frozen=True, slots=True)
class Handoff:
    """Who holds a session's claim: the agent, its fencing token, and when the lease ends."""

    session_id: str
    agent_id: str
    token: int
    expires_at: float

    def seconds_left(self, now: float) -> float:
        return max(0.0, self.expires_at - now)


class AtomicOperations(RedisBacked):
    """Claim, renew, release and reassign a session's handoff; exactly one claimer wins.

    A claim is a lease: it ends after ``ttl`` seconds unless renewed, so a crashed agent
    cannot hold a session forever. Each grant gets a fencing token larger than the last.
    """

    def __init__(self, redis_url: str | None = None, **options: Any) -> None:
        super().__init__(redis_url, **options)
        self._claims: dict[tuple[str, str], int] = {}

    async def claim_handoff(
        self,
        session_id: str,
        agent_id: str,
        ttl: float = DEFAULT_CLAIM_TTL,
        *,
        idempotency_key: str | None = None,
    ) -> bool:
        """True if ``agent_id`` now holds the session; False if someone (or a human) does.

        A claim re-sent with the same ``idempotency_key`` (after a lost answer) reports the
        first attempt's outcome: True if that attempt won, though the claim is now held."""
        validate_session_id(session_id)
        validate_agent_id(agent_id)
        op_id = caller_op_id("claim", idempotency_key) if idempotency_key is not None else None
        result = await self._run(claim_script, session_id, agent_id, lease_ms(ttl), op_id=op_id)
        if result[0] == 1:
            self._claims[(session_id, agent_id)] = int(result[2])
            return True
        return False

    async def renew_handoff(
        self, session_id: str, agent_id: str, ttl: float = DEFAULT_CLAIM_TTL
    ) -> Handoff:
        """Extend the lease; raises ``NotOwner`` if ``agent_id`` no longer holds it."""
        validate_agent_id(agent_id)
        result = await self._run(renew_script, session_id, agent_id, lease_ms(ttl))
        if result[0] == 0:
            raise NotOwner(session_id, agent_id, result[1] or None)
        return Handoff(session_id, agent_id, int(result[1]), int(result[2]) / 1000.0)

    async def release_handoff(
        self, session_id: str, agent_id: str | None = None, *, by: str | None = None
    ) -> bool:
        """Release the claim. With ``agent_id``, only if that agent holds it (else ``NotOwner``);
        without, whoever holds it (a forced release). False when nothing was claimed."""
        if agent_id is not None:
            validate_agent_id(agent_id)
        by_text = validate_actor(by, "by")
        result = await self._run(release_script, session_id, agent_id or "", by_text)
        if result[0] == 0:
            if agent_id is not None:
                raise NotOwner(session_id, agent_id, result[2] or None)
            return False
        self._claims.pop((session_id, result[2]), None)
        return True

    async def reassign_handoff(
        self,
        session_id: str,
        to_agent: str,
        by: str | None = None,
        *,
        expected_owner: str | None = None,
        ttl: float = DEFAULT_CLAIM_TTL,
    ) -> int:
        """Give the claim to ``to_agent`` (a new lease and token); returns the token.

        ``expected_owner`` ("" for unclaimed) refuses with ``NotOwner`` if the claim changed
        since the caller looked. Refused with ``SessionTakenOver`` while a human controls it.
        """
        validate_agent_id(to_agent)
        by_text = validate_actor(by, "by")
        expect = "0" if expected_owner is None else "1" + validate_actor(expected_owner, "owner")
        result = await self._run(
            reassign_script, session_id, to_agent, lease_ms(ttl), by_text, expect
        )
        if result[0] == 0:
            reason, holder = result[1], result[2]
            if reason == "human":
                raise SessionTakenOver(session_id, holder)
            if reason == "closed":
                raise SessionClosed(session_id)
            raise NotOwner(session_id, expected_owner or "", holder or None)
        return int(result[2])

    async def get_handoff(self, session_id: str) -> Handoff | None:
        """The current claim, or None when nobody holds the session."""
        validate_session_id(session_id)
        raw = await self.call(self.redis.hgetall(self.keys.session(session_id).claim))
        if not raw or "agent" not in raw:
            return None
        return Handoff(session_id, raw["agent"], int(raw["token"]), int(raw["expires"]) / 1000.0)

    async def clear(self) -> None:
        """Release the claims this object made that its agents still hold; nothing else."""
        claims, self._claims = self._claims, {}
        for session_id, agent_id in claims:
            try:
                await self.release_handoff(session_id, agent_id)
            except NotOwner:
                pass
