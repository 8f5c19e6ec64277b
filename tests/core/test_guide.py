"""Every snippet of the agent coordination guide, in order, with only the import line changed.

The snippets are cut from the guide text (shared/spec, or its copy in docs/spec) and run in one namespace with top-level await against a real Redis. The
multi-agent part runs ``agents.Runner`` with an offline scripted model.
"""

from __future__ import annotations

import ast
import contextlib
import io
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE_COPIES = [
    ROOT.parent / "shared" / "spec" / "agent-coordination-guide.txt",
    ROOT / "docs" / "spec" / "agent-coordination-guide.txt",
]

# Each snippet is the guide's text from its first line through its last one, cut from the
# guide itself so it runs exactly as written.
SNIPPET_BOUNDS = [
    ("import os", 'REDIS_URL = os.environ.get("REDIS_URL"'),
    ("from redis_openai_agents import AgentCoordinator, EventType", 'print(f"Coordinator created'),
    ("# Available event types", '    print(f"  - {event_type.name}'),
    ("# Publish a handoff event", 'print("Handoff event published")'),
    ("# Publish agent status", 'print("Agent ready event published")'),
    ("from agents import Agent, Runner", '    issues and provide step-by-step solutions."""\n)'),
    ("async def triage_and_handoff", "    return target"),
    ("# Test triage", 'print(f"Handoff to: {target}")'),
    ("async def specialist_listener", "    return None"),
    ("# Simulate specialist listening", "result = await specialist_listener("),
    (
        "from redis_openai_agents import AtomicOperations",
        '    print("Handoff already claimed by another agent")',
    ),
    ("# Try to claim again", 'print(f"Second claim attempt'),
    ("# Release handoff", 'print("Handoff released")'),
    ("# Set shared state", 'print(f"All state: {all_state}")'),
    ('session_id = f"{user_id}', 'session_id = f"{user_id}'),
    (
        'await coordinator.publish(EventType.HANDOFF_READY, {\n    "from_agent": "triage",\n    "to_agent": "specialist"',
        "})",
    ),
    ("async for event in coordinator.subscribe(timeout=30.0)", "    await escalate_to_human()"),
    ("# Clean up", 'print("Coordination state cleared!")'),
]


def guide_snippets() -> list[str]:
    text = guide_text()
    snippets, pos = [], 0
    for first, last in SNIPPET_BOUNDS:
        begin = text.index(first, pos)
        finish = text.index(last, begin) + len(last)
        finish = text.find("\n", finish) if text.find("\n", finish) != -1 else len(text)
        snippets.append(text[begin:finish])
        pos = finish
    return snippets


def guide_text() -> str:
    for path in GUIDE_COPIES:
        if path.exists():
            return path.read_text()
    raise AssertionError(f"the guide is missing; looked in {GUIDE_COPIES}")


def test_snippets_cover_every_code_line_of_the_guide():
    snippets = guide_snippets()
    assert len(snippets) == 18
    assert snippets[5].count("Agent(") == 3
    assert "await escalate_to_human()" in snippets[16]


async def run_snippet(source: str, namespace: dict) -> str:
    source = source.replace("from redis_openai_agents import", "from coordination import")
    code = compile(source, "<guide>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = eval(code, namespace)  # noqa: S307 - the guide's own snippets
        if result is not None:
            await result
    return out.getvalue()


async def test_every_guide_snippet_runs_and_prints_what_the_guide_implies(
    redis_url, namespace, monkeypatch
):
    from agents import set_tracing_disabled

    from coordination.devtools.scripted_model import ScriptedModel

    # The guide sets a placeholder key itself. setenv first, so monkeypatch records the
    # original (usually: absent) and the guide's placeholder is undone too; a leaked key sent
    # later tests' example runs to the real API.
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("COORDINATION_NAMESPACE", namespace)
    set_tracing_disabled(True)
    escalations = []

    async def escalate_to_human():
        escalations.append(await ns["coordinator"].escalate("no specialist answered"))

    ns: dict = {
        "__name__": "guide",
        # What the best-practice fragments take from the reader's program.
        "user_id": "u42",
        "conversation_id": "c7",
        "timestamp": "1700000000",
        "messages": [{"role": "user", "content": "refund please"}],
        "customer_data": {"tier": "gold"},
        "detected_intent": "refund",
        "escalate_to_human": escalate_to_human,
    }
    outputs = []
    for snippet in guide_snippets():
        outputs.append(await run_snippet(snippet, ns))
        if "triage_agent = Agent(" in snippet:
            model = ScriptedModel()
            for agent in (ns["triage_agent"], ns["billing_agent"], ns["tech_agent"]):
                agent.model = model  # Runner "given a model": offline, no key needed
    printed = "".join(outputs)

    assert "Coordinator created for session: support-session-001" in printed
    assert "  - HANDOFF_READY: handoff_ready" in printed
    assert "  - AGENT_READY: agent_ready" in printed
    assert "Handoff event published" in printed
    assert "Agent ready event published" in printed
    assert "Handoff to: billing_specialist" in printed
    assert "billing_specialist received handoff!" in printed
    assert "  From: triage" in printed
    assert "  Query: I was charged twice for my subscription last month" in printed
    assert "Handoff claimed successfully!" in printed
    assert "Second claim attempt: False" in printed
    assert "Handoff released" in printed
    assert "Current agent: billing_specialist" in printed
    assert (
        "All state: {'current_agent': 'billing_specialist', 'issue_status': 'in_progress', "
        "'resolution': None}" in printed
    )
    assert ns["result"]["to_agent"] == "billing_specialist"
    assert ns["session_id"] == "u42:c7:1700000000"
    assert len(escalations) == 1, "the for-else ran after 30 s without events"
    assert "Coordination state cleared!" in printed
    assert await ns["coordinator"].get_all_state() == {}
    assert await ns["coordinator"].event_count() == 0
