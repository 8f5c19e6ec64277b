"""OpenAI Agents SDK integration: run hooks that report into a session, a takeover guard, and
tool-call approvals decided by people.

    hooks = CoordinationHooks(coordinator)
    result = await run_guarded(agent, "I was charged twice", coordinator=coordinator, hooks=hooks)

The guard checks the session before the run and before every model call ("turn"); when a
human has taken the session over, the run stops with ``SessionTakenOver`` and the hooks
publish nothing more in that session's name. After a hand-back, the next run goes ahead.

Approvals: the SDK pauses a run on a tool declared ``needs_approval=True`` and returns its
``interruptions``. ``run_guarded`` saves the paused ``RunState`` with the session (the
session's ``runs`` key, not its shared state), asks ``request_approval(action=<tool name>,
args=<parsed arguments>, agent_id=<agent name>)`` for each call, waits for the decisions and
resumes the run: an approved call runs once, a rejected one never, and the model reads the
supervisor's message as the call's output ("A human supervisor (human:alice) rejected this
tool call: <message>"; an expired request: "No supervisor decided on this tool call in time;
it was not run."). Before resuming, the saved run is claimed (``claim_run``): one process
resumes it, so a second process (``resume_pending`` after a restart) cannot run an approved
tool again. A crash after the claim leaves the run claimed and it is not retried: the tool may
already have run (at most once, never twice). A human who took the session over while the run
waited stops it before the claim (``SessionTakenOver``): it stays saved, decisions included,
and ``resume_pending`` continues it after the hand-back.

Edited arguments: the SDK (0.24) cannot run a call with other arguments than the model's. A
decision that approves with edited ``args`` is passed to the model as a rejection that names
the approved arguments and asks it to call the tool again with them; a call of that tool with
exactly those arguments in the same run is then approved without asking again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from typing import Any

from agents import Agent, RunHooks, Runner
from agents.items import ToolApprovalItem
from agents.run_state import RunState

from coordination.core import (
    AgentCoordinator,
    ApprovalExpired,
    CoordinationError,
    Decision,
    DecisionTimeout,
    DecisionVerifier,
    EventType,
    SessionTakenOver,
)
from coordination.integrations.openai_session import CoordinationSession

log = logging.getLogger(__name__)

__all__ = [
    "CoordinationHooks",
    "CoordinationSession",
    "RunClaimedElsewhere",
    "resume_pending",
    "run_guarded",
]

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


class RunClaimedElsewhere(CoordinationError):
    """Another process resumed this saved run first; this one did not run its tools."""


def _tool_args(item: ToolApprovalItem) -> Any:
    """The call's arguments as JSON, whatever the model wrote (kept as text if not JSON)."""
    text = item.arguments
    if text is None:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return {"arguments": text}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _call_id(item: ToolApprovalItem) -> str:
    raw = item.raw_item
    value = raw.get("call_id") if isinstance(raw, dict) else getattr(raw, "call_id", None)
    value = value or (raw.get("id") if isinstance(raw, dict) else getattr(raw, "id", None))
    return str(value or "")


def _worker_name(agent: Agent) -> str:
    return f"{agent.name}@{socket.gethostname()}:{os.getpid()}"


def rejection_text(decision: Decision | None, tool: str) -> str:
    """What the model reads as the output of a call that did not run."""
    if decision is None:
        return "No supervisor decided on this tool call in time; it was not run."
    who = decision.by or "a supervisor"
    if decision.approved:  # approved with edited arguments
        text = (
            f"A human supervisor ({who}) approved this call only with these arguments: "
            f"{json.dumps(decision.args)}. Call {tool} again with exactly these arguments."
        )
        return f"{text} Their message: {decision.message}" if decision.message else text
    text = f"A human supervisor ({who}) rejected this tool call"
    return f"{text}: {decision.message}" if decision.message else f"{text}."


class _Run:
    """One guarded run that may pause for approvals, saved under ``name`` while it waits."""

    def __init__(
        self,
        agent: Agent,
        coordinator: AgentCoordinator,
        hooks: CoordinationHooks,
        *,
        name: str | None = None,
        approval_timeout: float | None = None,
        approval_expires_in: float | None = None,
        verifier: DecisionVerifier | None = None,
        run_kwargs: dict[str, Any],
    ) -> None:
        self.agent = agent
        # decisions must carry the dashboard's signature when a key is given or configured
        self.verifier = verifier if verifier is not None else DecisionVerifier.from_env()
        self.coordinator = coordinator
        self.hooks = hooks
        self.name = name or uuid.uuid4().hex
        self.approval_timeout = approval_timeout
        self.approval_expires_in = approval_expires_in
        self.run_kwargs = run_kwargs
        # (tool name, canonical arguments) a supervisor approved as edited arguments
        self.preapproved: list[list[str]] = []

    async def settle(self, result):
        """Resume ``result`` through every approval it stops on; the final result."""
        while result.interruptions:
            state = result.to_state()
            plan = await self.pause(state)
            result = await self.resume(state, plan)
        await self.coordinator.delete_run(self.name)
        return result

    async def pause(self, state: RunState) -> list[dict[str, Any]]:
        """Save the paused state, then ask for each call's approval (in this order, so a
        restart finds every request it must wait for in the saved run)."""
        plan = []
        for item in state.get_interruptions():
            args = _tool_args(item)
            key = [item.tool_name or "", _canonical(args)]
            if key in self.preapproved:
                self.preapproved.remove(key)
                state.approve(item)
                continue
            plan.append(
                {
                    "call_id": _call_id(item),
                    "approval_id": uuid.uuid4().hex,
                    "tool": item.tool_name or "",
                    "args": args,
                    "agent": item.agent.name,
                }
            )
        await self.coordinator.save_run(
            self.name,
            {
                "agent": self.agent.name,
                "state": state.to_string(),
                "plan": plan,
                "preapproved": self.preapproved,
                "saved_ms": int(time.time() * 1000),
            },
        )
        await self.request(plan)
        return plan

    async def request(self, plan: list[dict[str, Any]]) -> None:
        for step in plan:  # idempotent: a resumed run asks again with the same ids
            await self.coordinator.request_approval(
                step["tool"],
                step["args"],
                agent_id=step["agent"],
                approval_id=step["approval_id"],
                expires_in=self.approval_expires_in,
            )

    async def resume(self, state: RunState, plan: list[dict[str, Any]]):
        """Wait for the decisions, apply them, claim the run and go on with it."""
        decisions: dict[str, Decision | None] = {}
        deadline = (
            None if self.approval_timeout is None else time.monotonic() + self.approval_timeout
        )
        for step in plan:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                decisions[step["call_id"]] = await self.coordinator.wait_for_decision(
                    step["approval_id"], timeout=left, verifier=self.verifier
                )
            except ApprovalExpired:
                decisions[step["call_id"]] = None
        by_call = {step["call_id"]: step for step in plan}
        for item in state.get_interruptions():
            call_id = _call_id(item)
            if call_id not in by_call:
                continue  # approved in ``pause`` (edited arguments approved earlier)
            decision = decisions[call_id]
            tool = item.tool_name or ""
            edited = (
                decision is not None
                and decision.approved
                and decision.args is not None
                and _canonical(decision.args) != _canonical(by_call[call_id]["args"])
            )
            if decision is not None and decision.approved and not edited:
                state.approve(item)
            else:
                if edited:
                    self.preapproved.append([tool, _canonical(decision.args)])
                state.reject(item, rejection_message=rejection_text(decision, tool))
        await self.hooks.check_control()  # a human in control: the run stays saved
        if not await self.coordinator.claim_run(self.name, _worker_name(self.agent)):
            raise RunClaimedElsewhere(
                f"saved run {self.name!r} of session {self.coordinator.session_id!r} was "
                "resumed by another process"
            )
        return await Runner.run(self.agent, state, hooks=self.hooks, **self.run_kwargs)


async def _guarded(agent: Agent, coordinator: AgentCoordinator, hooks: CoordinationHooks, run):
    """Run ``run()`` under the takeover guard, reporting failures as ERROR events."""
    hooks.stopped = False
    await hooks.check_control()
    try:
        return await run()
    except SessionTakenOver:
        hooks.stopped = True
        raise
    except (DecisionTimeout, RunClaimedElsewhere):
        raise  # not failures: the run stays saved (or another process has it)
    except Exception as exc:
        if not hooks.stopped:
            await coordinator.publish(
                EventType.ERROR,
                {"agent_id": agent.name, "error": type(exc).__name__, "message": _short(str(exc))},
                source=agent.name,
            )
        raise


async def run_guarded(
    agent: Agent,
    input: Any,
    *,
    coordinator: AgentCoordinator,
    hooks: CoordinationHooks | None = None,
    approval_timeout: float | None = None,
    approval_expires_in: float | None = None,
    verifier: DecisionVerifier | None = None,
    **kwargs: Any,
):
    """``Runner.run`` that refuses to start (or go on) while a human controls the session,
    asks people to approve tool calls that need it, and reports a failure as an ERROR event.

    ``approval_timeout`` bounds the wait for decisions (``DecisionTimeout``; the run stays
    saved for ``resume_pending``); ``approval_expires_in`` makes each request expire (the
    call is then not run). ``verifier`` (default: ``COORDINATION_DECISION_KEY`` when set)
    refuses decisions the dashboard did not sign with ``UnverifiedDecision``: the call is
    not run. Other keyword arguments (``session=``, ``max_turns=``, ...) go to ``Runner.run``.
    """
    hooks = hooks or CoordinationHooks(coordinator)
    guarded = _Run(
        agent,
        coordinator,
        hooks,
        approval_timeout=approval_timeout,
        approval_expires_in=approval_expires_in,
        verifier=verifier,
        run_kwargs=kwargs,
    )

    async def run():
        result = await Runner.run(agent, input=input, hooks=hooks, **kwargs)
        return await guarded.settle(result)

    return await _guarded(agent, coordinator, hooks, run)


async def resume_pending(
    agent: Agent,
    *,
    coordinator: AgentCoordinator,
    hooks: CoordinationHooks | None = None,
    approval_timeout: float | None = None,
    approval_expires_in: float | None = None,
    verifier: DecisionVerifier | None = None,
    **kwargs: Any,
) -> list:
    """Resume the session's saved runs of ``agent`` (after a crash or restart): wait for
    their decisions, apply them, go on. Returns the final results, oldest run first.

    A run another process has claimed is skipped (logged): it may have run its tools.
    ``agent`` must be the agent the run started with (the SDK rebuilds the run from it).
    """
    hooks = hooks or CoordinationHooks(coordinator)
    saved = await coordinator.saved_runs()
    results = []
    for name, (record, claim) in sorted(saved.items(), key=lambda kv: _saved_ms(kv[1][0])):
        if not isinstance(record, dict) or record.get("agent") != agent.name:
            continue
        if claim is not None:
            log.warning(
                "saved run %s of session %s was claimed by %s and is not resumed again",
                name,
                coordinator.session_id,
                claim.get("by"),
            )
            continue
        guarded = _Run(
            agent,
            coordinator,
            hooks,
            name=name,
            approval_timeout=approval_timeout,
            approval_expires_in=approval_expires_in,
            verifier=verifier,
            run_kwargs=kwargs,
        )
        guarded.preapproved = [p for p in record.get("preapproved") or [] if isinstance(p, list)]

        async def run(guarded=guarded, record=record):
            state = await RunState.from_string(agent, record["state"])
            plan = record.get("plan") or []
            await guarded.request(plan)
            return await guarded.settle(await guarded.resume(state, plan))

        try:
            results.append(await _guarded(agent, coordinator, hooks, run))
        except RunClaimedElsewhere as exc:
            log.warning("%s", exc)
    return results


def _saved_ms(record: Any) -> int:
    value = record.get("saved_ms") if isinstance(record, dict) else None
    return value if isinstance(value, int) else 0
