"""An offline model for the OpenAI Agents SDK: answers from a script, never calls the network.

It lets the guide's examples, the demo fleet and the tests run without an API key. Give it
a function ``reply(instructions, text) -> str`` or use the support-desk default.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

from agents.items import ModelResponse
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import ResponseOutputMessage, ResponseOutputText

ReplyFunction = Callable[[str, str], str]

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
    """The newest user text of a Responses-format input."""
    if isinstance(value, str):
        return value
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
    """A ``Model`` whose answers come from ``reply``; it records every call it received."""

    _ids = itertools.count(1)

    def __init__(self, reply: ReplyFunction = support_desk_reply) -> None:
        self.reply = reply
        self.calls: list[tuple[str, str]] = []

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
        answer = self.reply(instructions, text)
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
