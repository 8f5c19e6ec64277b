"""An offline model for the OpenAI Agents SDK: answers from a script, never calls the network.

It lets the guide's examples, the demo fleet and the tests run without an API key. Give it
a function ``reply(instructions, text) -> str`` or use the support-desk default. A reply may be
a ``ToolCall`` instead of text: the model then calls that tool (``text`` of the next turn is
the tool's output, or the rejection message when a supervisor refused the call).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from agents.items import ModelResponse
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)


@dataclass(frozen=True)
class ToolCall:
    """A scripted reply that calls the tool ``name`` with ``arguments``."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


ReplyFunction = Callable[[str, str], "str | ToolCall"]

_CATEGORIES = (
    (
        "billing",
        ("charge", "charged", "refund", "invoice", "bill", "subscription", "payment", "price"),
    ),
    ("technical", ("error", "crash", "bug", "login", "password", "install", "slow", "broken")),
    ("sales", ("buy", "upgrade", "plan", "quote", "discount", "demo")),
)


def categorize(text: str) -> str:
    """The support-desk triage rule: keywords to billing / technical / sales."""
    lowered = text.lower()
    for category, words in _CATEGORIES:
        if any(word in lowered for word in words):
            return category
    return "sales"


def support_desk_reply(instructions: str, text: str) -> str:
    if "triage" in instructions.lower():
        return categorize(text)
    return f"Thanks for reaching out. I have looked into it: {text[:120]}"


def input_text(value: str | list[Any]) -> str:
    """The newest text of a Responses-format input: a message's, or a tool call's output when
    that is the newest item."""
    if isinstance(value, str):
        return value
    if value and isinstance(value[-1], dict) and value[-1].get("type") == "function_call_output":
        output = value[-1].get("output")
        return output if isinstance(output, str) else json.dumps(output)
    for item in reversed(value):
        content = item.get("content") if isinstance(item, dict) else getattr(item, "content", None)
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [c.get("text", "") for c in content if isinstance(c, dict)]
            if texts:
                return " ".join(texts)
    return ""


class ScriptedModel(Model):
    """A ``Model`` whose answers come from ``reply``; it records every call it received
    (``calls``: instructions and text; ``inputs``: the whole input of each call)."""

    _ids = itertools.count(1)

    def __init__(self, reply: ReplyFunction = support_desk_reply) -> None:
        self.reply = reply
        self.calls: list[tuple[str, str]] = []
        self.inputs: list[str | list[Any]] = []

    async def get_response(
        self,
        system_instructions,
        input,
        model_settings,
        tools,
        output_schema,
        handoffs,
        tracing,
        *,
        previous_response_id=None,
        conversation_id=None,
        prompt=None,
        **kwargs,
    ) -> ModelResponse:
        instructions = system_instructions or ""
        text = input_text(input)
        self.calls.append((instructions, text))
        self.inputs.append(input)
        answer = self.reply(instructions, text)
        if isinstance(answer, ToolCall):
            call = ResponseFunctionToolCall(
                id=f"fc_scripted_{next(self._ids)}",
                call_id=f"call_{uuid.uuid4().hex}",  # unique across restarts too
                name=answer.name,
                arguments=json.dumps(answer.arguments),
                type="function_call",
                status="completed",
            )
            return ModelResponse(output=[call], usage=Usage(), response_id=None)
        message = ResponseOutputMessage(
            id=f"msg_scripted_{next(self._ids)}",
            content=[ResponseOutputText(text=answer, type="output_text", annotations=[])],
            role="assistant",
            status="completed",
            type="message",
        )
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    async def stream_response(self, *args, **kwargs) -> AsyncIterator[Any]:
        raise NotImplementedError("ScriptedModel answers with get_response only (Runner.run)")
        yield  # pragma: no cover
