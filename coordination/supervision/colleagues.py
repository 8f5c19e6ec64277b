"""Who may act on a session a colleague has taken over: one rule for the session page (what it
offers), bulk actions and the JSON API (what they refuse). All three reach the rule through
``interventions._perform``, which checks it against the session as it stands before acting.

While a person controls a session (took it over and has not handed it back), only that person
acts on it: replies, hand-back, release, reassign, close. Other supervisors may add a note
(visible to everyone on the session); taking over is refused, naming who holds it.
"""

from __future__ import annotations

from coordination.core import SessionSummary

# what anyone with the supervisors role may do on a colleague's session
OPEN_TO_COLLEAGUES = frozenset({"note"})
# every action, by the names the URLs, the API and the audit trail use ("take-over" and
# "take_over" alike)
ACTIONS = ("take-over", "reply", "hand-back", "release", "reassign", "note", "close")


def colleague_holds(action: str, summary: SessionSummary, me: str) -> str | None:
    """The colleague (``human:<name>``) who controls the session when that bars ``me`` from
    ``action``; None when ``me`` may do it (the core still checks the rest: a closed session,
    a changed claim, a hand-back of a session nobody controls)."""
    controller = summary.controller
    if not controller or controller == me:
        return None
    if action.replace("_", "-") in OPEN_TO_COLLEAGUES:
        return None
    return controller


def offered_actions(summary: SessionSummary, me: str) -> frozenset[str]:
    """The actions the session page offers ``me`` on the session as it stands."""
    if summary.status == "closed":
        return frozenset({"note"})
    if summary.controller == me:
        shown = {"hand-back", "reply", "note", "close"}
    elif summary.controller:
        shown = set(ACTIONS)  # narrowed by the rule below to what colleagues may do
    else:
        shown = {"take-over", "reassign", "note", "close"}
        if summary.claim_agent:
            shown.add("release")
    return frozenset(a for a in shown if colleague_holds(a, summary, me) is None)
