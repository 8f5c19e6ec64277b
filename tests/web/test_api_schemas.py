"""The API's schemas are the core's types: a field added to a core dataclass appears in the
API, and what the API leaves out is a named, deliberate choice. The statuses and limits the
API checks are the ones the core and the supervision layer define."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from ninja import Schema

from coordination.api import approvals as api_approvals
from coordination.api import v1
from coordination.api.schemas import schema_from_dataclass
from coordination.core import STATUSES, Approval
from coordination.core.approvals import MAX_MESSAGE_CHARS
from coordination.core.events import Event
from coordination.core.index import AgentPresence, SessionSummary
from coordination.supervision.limits import MAX_BULK, MAX_TEXT


def field_names(dataclass_type) -> set[str]:
    return {f.name for f in dataclasses.fields(dataclass_type)}


def test_session_out_has_every_field_of_session_summary_with_its_type():
    assert set(v1.SessionOut.model_fields) == field_names(SessionSummary)
    assert "fence" in v1.SessionOut.model_fields  # the field the hand-written copy had lost
    hints = typing.get_type_hints(SessionSummary)
    for name, info in v1.SessionOut.model_fields.items():
        assert info.annotation == hints[name], name
        assert info.is_required(), name  # the API always sends every field


def test_session_detail_is_the_summary_and_the_state():
    assert set(v1.SessionDetailOut.model_fields) == field_names(SessionSummary) | {"state"}


@pytest.mark.parametrize(
    ("schema", "source", "left_out"),
    [
        (lambda: v1.EventOut, Event, {"extra"}),
        (lambda: v1.AgentOut, AgentPresence, {"extra"}),
        (
            lambda: api_approvals.ApprovalOut,
            Approval,
            {"request_event_id", "decision_event_id", "signature"},
        ),
    ],
)
def test_other_outputs_are_their_core_type_minus_named_fields(schema, source, left_out):
    assert set(schema().model_fields) == field_names(source) - left_out


def test_a_summary_serialises_through_the_schema_with_its_fence():
    summary = SessionSummary(
        session_id="s",
        status="active",
        owner="a",
        controller=None,
        last_event_id="1-0",
        last_event_type="message",
        last_activity=1.0,
        created=1.0,
        claim_token=7,
        fence=7,
    )
    out = v1.SessionOut.model_validate(summary).model_dump()
    assert out == dataclasses.asdict(summary)


def test_naming_a_field_the_dataclass_lacks_fails_at_once():
    with pytest.raises(TypeError, match="no field"):
        schema_from_dataclass(SessionSummary, "Bad", exclude=frozenset({"nope"}))
    with pytest.raises(TypeError, match="no field"):
        schema_from_dataclass(SessionSummary, "Bad", descriptions={"fenc": "typo"})


def test_the_derived_schema_is_a_ninja_schema_in_the_openapi_document():
    assert issubclass(v1.SessionOut, Schema)
    components = v1.api.get_openapi_schema()["components"]["schemas"]
    session = components["SessionOut"]
    assert set(session["properties"]) == field_names(SessionSummary)
    assert set(session["required"]) == field_names(SessionSummary)
    assert session["properties"]["fence"]["type"] == "integer"


def test_statuses_and_limits_come_from_one_home_each():
    assert typing.get_args(v1.Status) == STATUSES
    constraints = {
        name: [getattr(m, "max_length", None) for m in info.metadata]
        for name, info in v1.InterventionIn.model_fields.items()
    }
    assert MAX_TEXT in constraints["text"] and MAX_TEXT in constraints["resolution"]
    bulk = [getattr(m, "max_length", None) for m in v1.BulkIn.model_fields["session_ids"].metadata]
    assert MAX_BULK in bulk
    message = api_approvals.DecideIn.model_fields["message"].metadata
    assert MAX_MESSAGE_CHARS in [getattr(m, "max_length", None) for m in message]
