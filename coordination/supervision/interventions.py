"""Supervisor actions. Each goes through the core (atomic, published as an event with the actor)
and leaves an ``AuditEntry``, refused attempts included. Views only parse forms and call these."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async

from coordination.core import (
    CoordinationError,
    EventType,
    InvalidAgentId,
    InvalidSessionId,
    NotHumanControlled,
    NotOwner,
    SessionClosed,
    SessionSummary,
    SessionTakenOver,
)
from coordination.core.keys import validate_agent_id, validate_session_id
from coordination.foundation.core_clients import atomic_operations, coordinator, session_index
from coordination.foundation.display import humanize_age
from coordination.foundation.telemetry import count_intervention
from coordination.models import AuditEntry
from coordination.realtime.groups import announce_audit
from coordination.supervision.colleagues import colleague_holds
from coordination.supervision.limits import MAX_REASON, MAX_TEXT

audit_log = logging.getLogger("coordination.audit")


class InterventionRefused(Exception):
    """The action was not done; the message says what changed or what is wrong."""


@dataclass(frozen=True)
class Actor:
    user: Any
    address: str | None = None

    @property
    def name(self) -> str:
        return f"human:{self.user.get_username()}"


def snapshot(summary: SessionSummary | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {
        "status": summary.status,
        "owner": summary.owner,
        "controller": summary.controller,
        "claim": summary.claim_agent,
        "token": summary.claim_token,
    }


@sync_to_async
def _audit(
    actor: Actor, action: str, session_id: str, before, after, outcome: str, detail: str
) -> None:
    audit_log.info(
        "%s %s %s: %s",
        actor.user.get_username(),
        action,
        outcome,
        detail[:200],
        extra={
            "session_id": session_id,
            "actor": actor.user.get_username(),
            "action": action,
            "outcome": outcome,
            "client_address": actor.address,
        },
    )
    AuditEntry.objects.create(
        actor=actor.user,
        actor_name=actor.user.get_username(),
        action=action,
        session_id=session_id,
        before=before,
        after=after,
        outcome=outcome,
        detail=detail[:2000],
        client_address=actor.address,
    )


async def _record(
    index, actor: Actor, action: str, session_id: str, before, after, outcome: str, detail: str
) -> None:
    """An intervention's traces: its audit entry, its metrics count, the pages' audit refresh."""
    await _audit(actor, action, session_id, before, after, outcome, detail)
    await count_intervention(index, action, outcome)
    await announce_audit(session_id)


async def _perform(
    actor: Actor,
    action: str,
    session_id: str,
    operation,
    detail: str = "",
    reason: str | None = None,
) -> str:
    """Run ``operation``, audit it (done or refused), and return the message for the page.
    ``reason`` (the supervisor's why, optional) is kept in the audit entry's detail."""
    index = session_index()
    try:
        validate_session_id(session_id)
    except InvalidSessionId as exc:
        raise InterventionRefused(f"Bad session id: {exc}") from None
    before = await index.get_session(session_id)
    if before is None:
        await _record(index, actor, action, session_id, None, None, "refused", "unknown session")
        raise InterventionRefused(f"Session {session_id!r} does not exist (or has expired).")
    try:
        holder = colleague_holds(action, before, actor.name)
        if holder is not None:  # the page does not offer it; bulk and the API are refused here
            raise InterventionRefused(
                f"Taken over by {holder.removeprefix('human:')} {_ago(before.taken_at)}. "
                "Only they act on it until they hand it back; you can add a note."
            )
        message = await operation(before)
    except InterventionRefused as exc:
        await _record(index, actor, action, session_id, snapshot(before), None, "refused", str(exc))
        raise
    except CoordinationError as exc:
        refusal = _explain(exc)
        await _record(index, actor, action, session_id, snapshot(before), None, "refused", refusal)
        raise InterventionRefused(refusal) from exc
    after = await index.get_session(session_id)
    detail = detail or message
    if reason:
        detail = f"{detail} Reason: {reason}"
    await _record(
        index, actor, action, session_id, snapshot(before), snapshot(after), "done", detail
    )
    return message


# The wall clock for "3s ago" in refusals; tests set it instead of racing the real one.
clock = time.time


def _ago(since: float | None) -> str:
    return humanize_age(clock() - since) if since else "just now"


def _explain(exc: CoordinationError) -> str:
    if isinstance(exc, SessionTakenOver):
        return f"Taken over by {exc.controller.removeprefix('human:')} {_ago(exc.since)}."
    if isinstance(exc, SessionClosed):
        return "The session is closed."
    if isinstance(exc, NotHumanControlled):
        return "No human controls this session any more."
    if isinstance(exc, NotOwner):
        if exc.current_owner:
            return f"The claim changed since this page was drawn: it is now held by {exc.current_owner}."
        return "The claim was released (or its lease expired) since this page was drawn."
    return str(exc)


def _text(value: str, what: str) -> str:
    text = (value or "").strip()
    if not text:
        raise InterventionRefused(f"The {what} is empty.")
    if len(text) > MAX_TEXT:
        raise InterventionRefused(f"The {what} is {len(text)} characters; the limit is {MAX_TEXT}.")
    return text


def _agent(value: str) -> str:
    try:
        return validate_agent_id((value or "").strip())
    except InvalidAgentId as exc:
        raise InterventionRefused(f"Agent id: {exc}") from None


def _reason(value: str | None) -> str | None:
    """The optional "why" of a take-over, release, reassign or close."""
    text = (value or "").strip()
    if len(text) > MAX_REASON:
        raise InterventionRefused(
            f"The reason is {len(text)} characters; the limit is {MAX_REASON}."
        )
    return text or None


def _expected(value: str | None) -> str | None:
    """A form's hidden "what the page showed" value: absent means "do not check"."""
    return None if value is None else value.strip()


async def take_over(actor: Actor, session_id: str, reason: str | None = None) -> str:
    why = _reason(reason)

    async def op(before):
        # the reason travels in the human_takeover event (agents and the timeline see it)
        took = await coordinator(session_id).take_over(actor.name, reason=why)
        return "You now control this session." if took else "You already control this session."

    return await _perform(actor, AuditEntry.Action.TAKE_OVER, session_id, op, reason=why)


async def hand_back(
    actor: Actor,
    session_id: str,
    to_agent: str,
    expected_controller: str | None,
    resolution: str | None = None,
) -> str:
    """End the takeover. ``resolution`` (optional) is what the human decided; it travels in
    the hand-back event so the agent continues from it instead of escalating again."""
    target = _agent(to_agent) if to_agent.strip() else None
    decided = (resolution or "").strip()
    if len(decided) > MAX_TEXT:
        raise InterventionRefused(
            f"The resolution is {len(decided)} characters; the limit is {MAX_TEXT}."
        )

    async def op(before):
        await coordinator(session_id).hand_back(
            target,
            by=actor.name,
            expected_controller=_expected(expected_controller),
            resolution=decided or None,
        )
        where = f"Handed back to {target}" if target else "Handed back to the queue"
        return f"{where} (resolution: {decided})." if decided else f"{where}."

    return await _perform(actor, AuditEntry.Action.HAND_BACK, session_id, op)


async def release(
    actor: Actor, session_id: str, expected_owner: str | None, reason: str | None = None
) -> str:
    expected = _expected(expected_owner)
    # the core's release event has no reason field: the reason is kept in the audit trail
    why = _reason(reason)

    async def op(before):
        ops = atomic_operations()
        if expected:
            await ops.release_handoff(session_id, expected, by=actor.name)
            return f"Released {expected}'s claim."
        if not await ops.release_handoff(session_id, by=actor.name):
            raise InterventionRefused("Nobody holds a claim on this session.")
        return "Released the claim."

    return await _perform(actor, AuditEntry.Action.RELEASE, session_id, op, reason=why)


async def agent_last_seen(agent_id: str) -> float | None:
    """When ``agent_id`` last reported in (announcement or heartbeat), or None if never."""
    index = session_index()
    score = await index.call(index.redis.zscore(index.keys.agents_seen, agent_id))
    return None if score is None else score / 1000.0


async def reassign(
    actor: Actor,
    session_id: str,
    to_agent: str,
    expected_owner: str | None,
    force: bool = False,
    reason: str | None = None,
) -> str:
    """Give the session's claim to ``to_agent``. Only agents the index knows (online or stale)
    are accepted unless ``force``: a typo would otherwise leave the session with an owner that
    never comes. An escalated session stays in the escalation queue until the agent takes it up."""
    target = _agent(to_agent)
    why = _reason(reason)  # kept in the audit trail (the core's reassign event has no reason)

    async def op(before):
        if not force and await agent_last_seen(target) is None:
            raise InterventionRefused(
                f"No agent named {target!r} has reported in; pick a known agent or tick "
                "'force' to reassign anyway."
            )
        token = await atomic_operations().reassign_handoff(
            session_id, target, by=actor.name, expected_owner=_expected(expected_owner)
        )
        kept = (
            " The escalation stays in the queue until the agent takes the session up."
            if before.status == "escalated"
            else ""
        )
        return f"Reassigned to {target} (token {token}).{kept}"

    detail = f"to {target}" + (" (forced)" if force else "")
    return await _perform(actor, AuditEntry.Action.REASSIGN, session_id, op, detail, why)


async def reply(actor: Actor, session_id: str, text: str) -> str:
    body = _text(text, "reply")

    async def op(before):
        if before.status == "closed":
            raise InterventionRefused("The session is closed.")
        await coordinator(session_id).publish(
            EventType.MESSAGE,
            {"role": "human", "from": actor.name, "text": body},
            source=actor.name,
        )
        return "Reply sent."

    return await _perform(actor, AuditEntry.Action.REPLY, session_id, op, body[:200])


async def add_note(actor: Actor, session_id: str, text: str) -> str:
    body = _text(text, "note")

    async def op(before):
        await coordinator(session_id).publish(
            EventType.NOTE, {"by": actor.name, "text": body}, source=actor.name
        )
        return "Note added."

    return await _perform(actor, AuditEntry.Action.NOTE, session_id, op, body[:200])


async def close(actor: Actor, session_id: str, reason: str | None = None) -> str:
    why = _reason(reason)

    async def op(before):
        # the reason travels in the session_closed event
        await coordinator(session_id).close(by=actor.name, reason=why or "closed by a supervisor")
        return "Session closed."

    return await _perform(actor, AuditEntry.Action.CLOSE, session_id, op, reason=why)


async def claim_next_escalation(actor: Actor) -> tuple[str | None, str]:
    """Take over the longest-waiting escalated session that nobody else grabbed first."""
    for summary in await session_index().escalation_queue(limit=20):
        try:
            message = await take_over(actor, summary.session_id)
        except InterventionRefused:
            continue  # another supervisor was faster; try the next one
        return summary.session_id, message
    return None, "The escalation queue is empty."


async def for_each(session_ids: list[str], act) -> list:
    """Bulk actions: ``act(session_id)`` for each distinct id in order, one at a time, so each
    is its own race-safe step (and audit entry) and one refusal does not stop the rest."""
    results = []
    for session_id in dict.fromkeys(session_ids):
        results.append(await act(session_id))
    return results
