"""The approvals panels (overview and session page) and their decision form.

Context builders are shared by the views and the live push (``fragments``, ``consumers``), so
a row looks the same whichever drew it. Everything shown was written by an agent: it is cleaned
and bounded here (``display``) and escaped by the templates.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from django import forms
from django.conf import settings
from django.template.loader import render_to_string

from coordination.core import Approval, SessionIndex
from coordination.core.approvals import MAX_MESSAGE_CHARS
from coordination.foundation.core_clients import coordinator
from coordination.foundation.display import (
    PAYLOAD_DISPLAY_BYTES,
    cut_chars,
    json_text,
    payload_display,
    short_text,
)

# The overview lists this many pending approvals (and says how many more exist).
OVERVIEW_APPROVALS = 20
# The session page lists this many decided approvals, newest first.
DECIDED_SHOWN = 20
PENDING_SHOWN = 20
ARGS_SUMMARY_CHARS = 100
# Arguments whose JSON text is larger than this are not offered for editing on the page (the
# text area would have to hold a cut copy); the API takes edited arguments of any allowed size.
EDITABLE_ARGS_BYTES = PAYLOAD_DISPLAY_BYTES
MAX_EDITED_ARGS_CHARS = 1024 * 1024


def approval_sla() -> float:
    return float(getattr(settings, "COORDINATION_APPROVAL_SLA", 120))


def approval_dom_id(approval: Approval) -> str:
    digest = hashlib.sha1(
        f"{approval.session_id}\0{approval.approval_id}".encode("utf-8", "surrogatepass")
    ).hexdigest()[:20]
    return f"approval-{digest}"


def approval_row(approval: Approval, now: float | None = None) -> dict[str, Any]:
    """What a panel shows of one approval (any record the index returns can be rendered)."""
    now = time.time() if now is None else now
    requested = approval.requested_at
    deadline = requested + approval_sla() if requested else None
    # the pretty body, whole (not cut), is what the editor starts from; larger ones are not edited
    args = payload_display(approval.args, limit=EDITABLE_ARGS_BYTES)
    editable = not args["truncated"]
    return {
        "session_id": short_text(approval.session_id) or "",
        "raw_session_id": approval.session_id,
        "approval_id": approval.approval_id,
        "dom_id": approval_dom_id(approval),
        "action": short_text(approval.action, 200) or "(no action)",
        "agent": short_text(approval.agent_id),
        "reason": cut_chars(approval.reason, MAX_MESSAGE_CHARS) if approval.reason else None,
        "args": args,
        "args_summary": cut_chars(json_text(approval.args), ARGS_SUMMARY_CHARS),
        "args_editable": editable,
        "args_json": args["body"] if editable else None,
        "requested_at": requested,
        "expires_at": approval.expires_at,
        "expired_unrecorded": approval.pending
        and approval.expires_at is not None
        and approval.expires_at <= now,
        "status": approval.status,
        "pending": approval.pending,
        "sla_deadline_ms": int(deadline * 1000) if deadline else 0,
        "over_sla": bool(deadline and now > deadline),
        "sla": approval_sla(),
        "decided_by": short_text(approval.decided_by),
        "decided_at": approval.decided_at,
        "message": cut_chars(approval.message, MAX_MESSAGE_CHARS) if approval.message else None,
        "decided_args": None
        if approval.decided_args is None
        else payload_display(approval.decided_args),
    }


async def overview_approvals_context(index: SessionIndex) -> dict[str, Any]:
    """The overview's pending approvals, oldest first, and how many are pending in all."""
    page = await index.pending_approvals(limit=OVERVIEW_APPROVALS)
    total = await index.approval_count()
    now = time.time()
    rows = [approval_row(a, now) for a in page.approvals]
    # the count is read after the page: entries the page dropped as stale are gone from it
    return {"approvals": rows, "approvals_total": max(total, len(rows))}


class DecisionForm(forms.Form):
    """One decision on one approval; the button pressed names the decision."""

    DECISIONS = (
        ("approve", "Approve"),
        ("reject", "Reject"),
        ("approve_edited", "Approve with edited arguments"),
    )
    approval_id = forms.CharField(max_length=64, widget=forms.HiddenInput)
    decision = forms.ChoiceField(choices=DECISIONS)
    message = forms.CharField(
        required=False,
        max_length=MAX_MESSAGE_CHARS,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 2, "hx-preserve": "true"}),
        label="Message to the agent (optional)",
    )
    args = forms.CharField(
        required=False,
        max_length=MAX_EDITED_ARGS_CHARS,
        strip=False,
        widget=forms.Textarea(
            attrs={"rows": 6, "spellcheck": "false", "class": "mono", "hx-preserve": "true"}
        ),
        label="Arguments (JSON)",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        data["edited_args"] = None
        if data.get("decision") == "approve_edited":
            text = data.get("args") or ""
            if not text.strip():
                self.add_error("args", "Write the arguments as JSON to approve with them.")
                return data
            try:
                data["edited_args"] = json.loads(text)
            except (ValueError, RecursionError) as exc:
                self.add_error(
                    "args",
                    f"Not valid JSON: {cut_chars(str(exc), 200)}. Nothing was decided; fix "
                    "the arguments and try again.",
                )
        return data


def _form_for(row: dict[str, Any], bound: DecisionForm | None) -> DecisionForm:
    if bound is not None and bound.data.get("approval_id") == row["approval_id"]:
        return bound
    initial = {"approval_id": row["approval_id"]}
    if row["args_editable"]:
        initial["args"] = row["args_json"]
    return DecisionForm(initial=initial, auto_id=f"{row['dom_id']}-%s")


async def session_approvals_context(
    session_id: str, bound: DecisionForm | None = None
) -> dict[str, Any]:
    """The session page's approvals: pending ones (each with its form), then decided ones."""
    approvals = await coordinator(session_id).approvals()
    now = time.time()
    # Rows (and their forms) only for what is shown: an agent can request thousands, and
    # each row carries up to 16 KiB of arguments twice (shown and in the editor).
    waiting = [a for a in approvals if a.pending]
    done = sorted(
        (a for a in approvals if not a.pending), key=lambda a: a.decided_at or 0, reverse=True
    )
    pending = []
    for approval in waiting[:PENDING_SHOWN]:
        row = approval_row(approval, now)
        row["form"] = _form_for(row, bound)
        pending.append(row)
    return {
        "approvals_pending": pending,
        "approvals_pending_more": max(0, len(waiting) - PENDING_SHOWN),
        "approvals_decided": [approval_row(a, now) for a in done[:DECIDED_SHOWN]],
        "approvals_decided_more": max(0, len(done) - DECIDED_SHOWN),
    }


def render_session_approvals(context: dict[str, Any]) -> str:
    """The session page's approvals panel for an out-of-band swap (live push)."""
    return render_to_string(
        "coordination/_approvals.html#session-approvals", {**context, "oob": True}
    )
