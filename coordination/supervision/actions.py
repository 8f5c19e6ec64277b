"""The supervisor's actions by the names the URLs and the API use ("take-over", "reply", ...):
one table shared by the session page, bulk actions and the JSON API, so all three do the same
thing with the same form fields."""

from __future__ import annotations

from coordination.supervision import interventions
from coordination.supervision.interventions import Actor

# The Django permission that makes a user a supervisor (viewers lack it).
PERMISSION = "coordination.intervene"


class UnknownAction(LookupError):
    """No action has this name (answered as 404 by the views and the API)."""


async def dispatch(action: str, actor: Actor, session_id: str, form) -> str:
    """Run one intervention named as in the URLs; ``form`` is the POST data (or a dict)."""
    match action:
        case "take-over":
            return await interventions.take_over(actor, session_id, form.get("reason"))
        case "hand-back":
            return await interventions.hand_back(
                actor,
                session_id,
                form.get("to_agent", ""),
                form.get("expected_controller"),
                form.get("resolution"),
            )
        case "release":
            return await interventions.release(
                actor, session_id, form.get("expected_owner"), form.get("reason")
            )
        case "reassign":
            to_agent = form.get("to_agent_typed", "").strip() or form.get("to_agent", "")
            return await interventions.reassign(
                actor,
                session_id,
                to_agent,
                form.get("expected_owner"),
                _ticked(form.get("force")),
                form.get("reason"),
            )
        case "reply":
            return await interventions.reply(actor, session_id, form.get("text", ""))
        case "note":
            return await interventions.add_note(actor, session_id, form.get("text", ""))
        case "close":
            return await interventions.close(actor, session_id, form.get("reason"))
    raise UnknownAction(f"unknown action {action[:40]!r}")


def bulk_refusal(action: str, to_agent: str | None) -> str | None:
    """Why a bulk action cannot start at all (said once for the request, not once per row),
    or None. Shared by the sessions page and the API's /bulk/."""
    if action in ("reassign", "hand-back") and not (to_agent or "").strip():
        if action == "reassign":
            return "Name the agent to reassign the selected sessions to."
        return (
            "Name the agent to hand the selected sessions back to (to hand one back to "
            "the queue, use its session page)."
        )
    return None


def _ticked(value: object) -> bool:
    """A checkbox (``"on"``) or the API's boolean."""
    return value is True or str(value or "").strip().lower() in {"on", "1", "true", "yes"}
