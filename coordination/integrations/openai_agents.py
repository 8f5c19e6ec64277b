"""OpenAI Agents SDK integration: run hooks that report into a session, and a takeover guard.

    hooks = CoordinationHooks(coordinator)
    result = await run_guarded(agent, "I was charged twice", coordinator=coordinator, hooks=hooks)

The guard checks the session before the run and before every model call ("turn"); when a
human has taken the session over, the run stops with ``SessionTakenOver`` and the hooks
publish nothing more in that session's name. After a hand-back, the next run goes ahead.
"""

from __future__ import annotations

from typing import Any

from agents import Agent, RunHooks, Runner

from ..core import AgentCoordinator, EventType, SessionTakenOver

MAX_RESULT_CHARS = 500


def _short(value: Any, limit: int = MAX_RESULT_CHARS) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class CoordinationHooks(RunHooks):
    """Publishes AGENT_STARTED / AGENT_COMPLETED / TOOL_RESULT / HANDOFF_READY for a session."""

    def __init__(self, coordinator: AgentCoordinator, *, guard: bool = True) -> None:
        self.coordinator = coordinator
        self.guard = guard
        self.stopped = False

    async def _publish(self, etype: EventType, data: dict[str, Any], source: str) -> None:
        if self.stopped:
            return
        try:
            # Guarded: refused in the same atomic step if a human took the session over.
            await self.coordinator.publish(etype, data, source=source, guard=self.guard)
        except SessionTakenOver:
            self.stopped = True
            raise

    async def check_control(self) -> None:
        """Raise ``SessionTakenOver`` (and go quiet) if a human controls the session."""
        if not self.guard:
            return
        controller = await self.coordinator.controller()
        if controller is not None:
            self.stopped = True
            raise SessionTakenOver(self.coordinator.session_id, controller)

    async def on_llm_start(self, context, agent, system_prompt, input_items) -> None:
        await self.check_control()

    async def on_agent_start(self, context, agent) -> None:
        await self._publish(EventType.AGENT_STARTED, {"agent_id": agent.name}, agent.name)

    async def on_agent_end(self, context, agent, output) -> None:
        await self._publish(
            EventType.AGENT_COMPLETED,
            {"agent_id": agent.name, "output": _short(output)},
            agent.name,
        )

    async def on_tool_end(self, context, agent, tool, result) -> None:
        await self._publish(
            EventType.TOOL_RESULT,
            {
                "agent_id": agent.name,
                "tool": getattr(tool, "name", str(tool)),
                "result": _short(result),
            },
            agent.name,
        )

    async def on_handoff(self, context, from_agent, to_agent) -> None:
        await self._publish(
            EventType.HANDOFF_READY,
            {"from_agent": from_agent.name, "to_agent": to_agent.name, "via": "sdk_handoff"},
            from_agent.name,
        )


async def run_guarded(
    agent: Agent,
    input: Any,
    *,
    coordinator: AgentCoordinator,
    hooks: CoordinationHooks | None = None,
    **kwargs: Any,
):
    """``Runner.run`` that refuses to start (or go on) while a human controls the session,
    and reports a failure as an ERROR event before re-raising it."""
    hooks = hooks or CoordinationHooks(coordinator)
    hooks.stopped = False
    await hooks.check_control()
    try:
        return await Runner.run(agent, input=input, hooks=hooks, **kwargs)
    except SessionTakenOver:
        hooks.stopped = True
        raise
    except Exception as exc:
        if not hooks.stopped:
            await coordinator.publish(
                EventType.ERROR,
                {"agent_id": agent.name, "error": type(exc).__name__, "message": _short(str(exc))},
                source=agent.name,
            )
        raise
