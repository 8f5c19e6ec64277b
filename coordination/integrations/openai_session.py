"""``CoordinationSession``: the Agents SDK's session memory kept in the coordination session.

    session = CoordinationSession(coordinator)
    await Runner.run(agent, "I was charged twice", session=session)

The conversation is the session's own events, so supervisors read the same transcript the
agent remembers, and what people add during a takeover reaches the agent's next run.

Writing: each item the SDK adds becomes a ``message`` event ``{"role", "text", "sdk_item"}``
(role ``customer`` for the user's messages, ``agent`` for the assistant's, ``tool`` for tool
calls and their outputs; ``text`` is a readable rendering, ``sdk_item`` the item itself).

Reading (``get_items``), in event order:
- events carrying ``sdk_item``: that item, if it is a user or assistant message, a tool call or
  a tool output (``safe_sdk_item``; never a system or developer item, whoever published it);
- a human's reply to the customer (``message`` with role ``human``, what the dashboard's reply
  publishes): an ``assistant`` message, ``"[Reply sent by human supervisor alice] <text>"``:
  the customer read it from our side of the conversation;
- other ``message`` events with text: role ``customer`` as ``user``, role ``agent`` as
  ``assistant`` (conversations written without this class);
- notes, takeovers and hand-backs: ``developer`` messages (context for the agent, never
  shown to the customer): ``"Note from human supervisor alice: <text>"``, ``"Human supervisor
  alice took over the conversation."``, ``"Human supervisor alice handed the conversation back
  (resolution: <text>)."``.

Events cannot be deleted: ``pop_item`` and ``clear_session`` publish markers (``message``
events with role ``memory``) that reading honours, so the transcript keeps what was said.
"""

from __future__ import annotations

import json
import re
from typing import Any

from agents.memory import SessionABC

from coordination.core import AgentCoordinator, Event, EventType

MAX_TEXT = 2000
_SURROGATE = re.compile("[\ud800-\udfff]")
_PAGE = 500


def _clean(text: str) -> str:
    """Lone surrogates (JSON escapes can hold them) would break the model request."""
    return _SURROGATE.sub("\ufffd", text)


def _short(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") or p.get("refusal") or "" for p in content if isinstance(p, dict)]
        return " ".join(p for p in parts if isinstance(p, str) and p)
    return ""


def describe_item(item: dict[str, Any]) -> tuple[str, str]:
    """``(role, text)`` of an SDK input item, as the transcript shows it."""
    kind = item.get("type")
    role = item.get("role")
    if role == "user":
        return "customer", _content_text(item.get("content"))
    if role in ("assistant",) and kind in (None, "message"):
        return "agent", _content_text(item.get("content"))
    if role in ("system", "developer"):
        return "system", _content_text(item.get("content"))
    if kind == "function_call":
        return "tool", f"{item.get('name')}({item.get('arguments') or ''})"
    if kind == "function_call_output":
        output = item.get("output")
        return "tool", f"→ {output if isinstance(output, str) else json.dumps(output)}"
    return "tool", str(kind or role or "item")


def _plain(item: Any) -> dict[str, Any]:
    """The item as plain JSON (the SDK hands dicts; anything else is converted)."""
    if hasattr(item, "model_dump"):
        item = item.model_dump(exclude_unset=True)
    return json.loads(json.dumps(item, default=str))


def _person(name: Any) -> str:
    text = name if isinstance(name, str) and name else "a supervisor"
    return text.removeprefix("human:")


_ITEM_ROLES = ("user", "assistant")
_CALL_FIELDS = {"type", "name", "arguments", "call_id", "id", "status"}
_OUTPUT_FIELDS = {"type", "call_id", "output", "id", "status"}
_REASONING_FIELDS = {"type", "id", "summary", "content", "encrypted_content", "status"}


def safe_sdk_item(item: Any) -> dict[str, Any] | None:
    """``item`` if it is a shape this class writes, else None (read as text instead).

    Any agent can publish a ``message`` event with an ``sdk_item``: taken unchanged it could
    plant a ``system``/``developer`` instruction in another agent's next run, or an item the
    model's API refuses on every later run. So only user and assistant messages with text
    content, tool calls and tool outputs pass, with the fields those carry."""
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    if kind in (None, "message"):
        content = item.get("content")
        text_parts = isinstance(content, list) and all(
            isinstance(part, dict) and isinstance(part.get("text"), str) for part in content
        )
        if item.get("role") in _ITEM_ROLES and (isinstance(content, str) or text_parts):
            return item
        return None
    if kind == "function_call" and set(item) <= _CALL_FIELDS:
        if isinstance(item.get("name"), str) and isinstance(item.get("call_id"), str):
            return item
        return None
    if kind == "function_call_output" and set(item) <= _OUTPUT_FIELDS:
        if isinstance(item.get("call_id"), str):
            return item
    if kind == "reasoning" and set(item) <= _REASONING_FIELDS:
        return item  # reasoning models need theirs back beside their tool calls
    return None


def item_from_event(event: Event) -> dict[str, Any] | None:
    """The input item an event stands for in the agent's memory, or None."""
    data = event.data
    if event.type is EventType.MESSAGE:
        item = safe_sdk_item(data.get("sdk_item"))
        if item is not None:
            return item
        text = data.get("text")
        if not isinstance(text, str) or not text:
            return None
        role = data.get("role")
        if role == "human":
            who = _person(data.get("from") or event.source)
            return {
                "role": "assistant",
                "content": _clean(f"[Reply sent by human supervisor {who}] {text}"),
            }
        if role == "customer":
            return {"role": "user", "content": _clean(text)}
        if role == "agent":
            return {"role": "assistant", "content": _clean(text)}
        return None
    if event.type is EventType.NOTE:
        text = data.get("text")
        if isinstance(text, str) and text:
            who = _person(data.get("by") or event.source)
            return {
                "role": "developer",
                "content": _clean(f"Note from human supervisor {who}: {text}"),
            }
        return None
    if event.type is EventType.HUMAN_TAKEOVER:
        who = _person(data.get("supervisor"))
        return {
            "role": "developer",
            "content": f"Human supervisor {who} took over the conversation.",
        }
    if event.type is EventType.HUMAN_HANDBACK:
        who = _person(data.get("by") or data.get("from"))
        text = f"Human supervisor {who} handed the conversation back"
        resolution = data.get("resolution") or data.get("note")
        if isinstance(resolution, str) and resolution:
            text += f" (resolution: {resolution})"
        return {"role": "developer", "content": _clean(text + ".")}
    return None


_READ_TYPES = (
    EventType.MESSAGE,
    EventType.NOTE,
    EventType.HUMAN_TAKEOVER,
    EventType.HUMAN_HANDBACK,
)


class CoordinationSession(SessionABC):
    """The SDK's ``Session`` over a coordination session's events (see the module docstring)."""

    def __init__(
        self,
        coordinator: AgentCoordinator,
        *,
        source: str | None = None,
        session_settings: Any = None,
    ) -> None:
        self.coordinator = coordinator
        self.session_id = coordinator.session_id
        self.session_settings = session_settings
        # who the agent's items are published as (the coordinator's source by default)
        self.source = source

    async def _newest_first(self):
        """``(event, item)`` pairs of the current memory, newest first: stops at the last
        clear, skips popped items."""
        before = None
        popped: set[str] = set()
        while True:
            page = await self.coordinator.events(newest_first=True, before=before, limit=_PAGE)
            for event in page:
                if event.type not in _READ_TYPES:
                    continue
                marker = event.data.get("memory") if event.type is EventType.MESSAGE else None
                if marker == "clear":
                    return
                if marker == "pop":
                    popped.add(str(event.data.get("event_id")))
                    continue
                if event.id in popped:
                    continue
                item = item_from_event(event)
                if item is not None:
                    yield event, item
            if len(page) < _PAGE:
                return
            before = page[-1].id

    async def get_items(self, limit: int | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        async for _event, item in self._newest_first():
            if limit is not None and len(items) >= limit:
                break
            items.append(item)
        items.reverse()
        return items

    async def add_items(self, items: list[Any]) -> None:
        for raw in items:
            item = _plain(raw)
            role, text = describe_item(item)
            source = "customer" if role == "customer" else (self.source or None)
            await self.coordinator.publish(
                EventType.MESSAGE,
                {"role": role, "text": _short(text), "sdk_item": item},
                source=source,
            )

    async def pop_item(self) -> dict[str, Any] | None:
        async for event, item in self._newest_first():
            await self.coordinator.publish(
                EventType.MESSAGE,
                {
                    "role": "memory",
                    "memory": "pop",
                    "event_id": event.id,
                    "text": "(an item was removed from the agent's memory)",
                },
                source=self.source,
            )
            return item
        return None

    async def clear_session(self) -> None:
        await self.coordinator.publish(
            EventType.MESSAGE,
            {"role": "memory", "memory": "clear", "text": "(the agent's memory was cleared)"},
            source=self.source,
        )
