"""The agent coordination guide's support-desk flow, runnable offline.

    REDIS_URL=redis://localhost:6379 python examples/support_desk.py

Triage runs through the OpenAI Agents SDK with a scripted offline model (set OPENAI_API_KEY
to use a real one), hands off to a specialist, the specialist claims the handoff atomically,
updates shared state and resolves the session.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agents import Agent, set_tracing_disabled  # noqa: E402

from coordination import AgentCoordinator, AtomicOperations, EventType  # noqa: E402
from coordination.devtools.scripted_model import ScriptedModel  # noqa: E402
from coordination.integrations.openai_agents import run_guarded  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379")
TARGETS = {
    "billing": "billing_specialist",
    "technical": "tech_specialist",
    "sales": "sales_specialist",
}


def model_options() -> dict:
    if os.environ.get("OPENAI_API_KEY"):
        return {}
    set_tracing_disabled(True)
    return {"model": ScriptedModel()}


async def main(query: str) -> None:
    session_id = f"example-{uuid.uuid4().hex[:8]}"
    triage = Agent(
        name="triage",
        instructions="You are a triage agent: billing, technical or sales?",
        **model_options(),
    )
    coordinator = AgentCoordinator(session_id, REDIS_URL, source="triage")
    atomic = AtomicOperations(REDIS_URL)

    result = await run_guarded(triage, query, coordinator=coordinator)
    target = next(
        (a for c, a in TARGETS.items() if c in result.final_output.lower()), "sales_specialist"
    )
    await coordinator.publish(
        EventType.HANDOFF_READY, {"from_agent": "triage", "to_agent": target, "query": query}
    )
    print(f"Session {session_id}: triage handed off to {target}")

    specialist = AgentCoordinator(session_id, REDIS_URL, source=target)
    async for event in specialist.subscribe(timeout=5.0, types=[EventType.HANDOFF_READY]):
        if event.data.get("to_agent") == target and await atomic.claim_handoff(session_id, target):
            print(f"{target} claimed the handoff: {event.data['query']}")
            break
    else:
        print("No specialist picked the session up; escalating")
        await specialist.escalate("no specialist available")
        return

    await specialist.update_state({"current_agent": target, "issue_status": "resolved"})
    print(f"Shared state: {await specialist.get_all_state()}")
    await atomic.release_handoff(session_id, target)
    await specialist.close(by=target, reason="resolved")
    print(f"Events in the session: {[str(e.type) for e in await specialist.events()]}")


if __name__ == "__main__":
    asyncio.run(
        main(" ".join(sys.argv[1:]) or "I was charged twice for my subscription last month")
    )
