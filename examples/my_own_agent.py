"""A minimal agent of your own, with plain asyncio and the core (no Agents SDK).

    REDIS_URL=redis://localhost:6379 python examples/my_own_agent.py SESSION_ID

It announces itself, waits for handoffs addressed to it, claims one, answers with guarded
publishes (refused atomically once a supervisor takes the session over), renews its lease
while it works and releases it when done. Run it, then take the session over from the
dashboard: the agent stops at once.
"""

from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coordination import (  # noqa: E402
    AgentCoordinator,
    AtomicOperations,
    EventType,
    NotOwner,
    SessionTakenOver,
)

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379")
AGENT_ID = "echo_agent"


async def work(session_id: str, replies: int = 3, wait: float = 30.0) -> str:
    coordinator = AgentCoordinator(session_id, REDIS_URL, source=AGENT_ID)
    atomic = AtomicOperations(REDIS_URL)
    await coordinator.publish(
        EventType.AGENT_READY, {"agent_id": AGENT_ID, "capabilities": ["echo"], "load": 0.0}
    )
    async for event in coordinator.subscribe(timeout=wait, types=[EventType.HANDOFF_READY]):
        if event.data.get("to_agent") != AGENT_ID:
            continue
        if await atomic.claim_handoff(session_id, AGENT_ID, ttl=10):
            break
        if await coordinator.is_human_controlled():
            return f"stopped: {await coordinator.controller()} controls this session"
    else:
        return "no handoff for me"
    try:
        for n in range(1, replies + 1):
            await atomic.renew_handoff(session_id, AGENT_ID, ttl=10)
            await coordinator.publish(
                EventType.MESSAGE, {"role": "agent", "text": f"reply {n}"}, guard=True
            )
        await atomic.release_handoff(session_id, AGENT_ID)
        return "done"
    except SessionTakenOver as exc:
        return f"stopped: {exc.controller} took over"
    except NotOwner:
        return "stopped: my claim was released or reassigned"


if __name__ == "__main__":
    print(asyncio.run(work(sys.argv[1] if len(sys.argv) > 1 else "my-session")))
