"""Agent frameworks on the core: the OpenAI Agents SDK (``pip install coordinator[agents]``):
run hooks, a takeover guard, tool-call approvals decided by people, and session memory kept
in the coordination session.

May import: ``coordination.core`` and the framework; never Django or the web side (an agent
host runs these without them).
"""
