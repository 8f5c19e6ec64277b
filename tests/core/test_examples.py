"""The runnable examples work offline, as the README says."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from coordination import EventType

ROOT = Path(__file__).resolve().parents[2]


async def run_example(redis_url, namespace, *args):
    env = {**os.environ, "REDIS_URL": redis_url, "COORDINATION_NAMESPACE": namespace}
    env.pop("OPENAI_API_KEY", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_support_desk_example(redis_url, namespace):
    out = await run_example(redis_url, namespace, "examples/support_desk.py")
    assert "triage handed off to billing_specialist" in out
    assert "billing_specialist claimed the handoff: I was charged twice" in out
    assert "'issue_status': 'resolved'" in out
    assert "'session_closed'" in out


async def test_my_own_agent_example_answers_a_handoff(redis_url, namespace, make):
    coord = make.coordinator("own-1")
    await coord.publish(EventType.HANDOFF_READY, {"from_agent": "triage", "to_agent": "echo_agent"})
    out = await run_example(redis_url, namespace, "examples/my_own_agent.py", "own-1")
    assert out.strip() == "done"
    texts = [e.data.get("text") for e in await coord.events() if e.type is EventType.MESSAGE]
    assert texts == ["reply 1", "reply 2", "reply 3"]


async def test_my_own_agent_example_stops_when_taken_over(redis_url, namespace, make):
    coord = make.coordinator("own-2")
    await coord.publish(EventType.HANDOFF_READY, {"from_agent": "triage", "to_agent": "echo_agent"})
    await coord.take_over("human:ann")
    out = await run_example(redis_url, namespace, "examples/my_own_agent.py", "own-2")
    assert out.strip() == "stopped: human:ann controls this session"
    assert not [e for e in await coord.events() if e.type is EventType.MESSAGE]
