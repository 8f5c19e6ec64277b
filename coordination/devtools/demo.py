"""The demo fleet: the guide's support desk (triage, then billing / technical / sales
specialists) over many sessions at once, with the real core. It obeys supervisors: a takeover
stops the agent before its next turn, a hand-back or reassignment hands the session to the
named agent, a forced release stops the holder and the session goes back to the queue.
An agent that continues a session after a hand-back reads what the humans said and decided
(replies, notes, the hand-back's resolution) and does not escalate again for a reason a human
resolved. Sessions left waiting (a released claim) are picked up by the category's specialist.

Offline by default (a scripted model); with ``OPENAI_API_KEY`` set it uses real models.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from dataclasses import dataclass, field

from agents import Agent, set_tracing_disabled

from coordination.core import (
    AgentCoordinator,
    AtomicOperations,
    CoordinationError,
    EventType,
    NotOwner,
    SessionIndex,
    SessionTakenOver,
)
from coordination.devtools.scripted_model import ScriptedModel
from coordination.integrations.human_context import read_human_context
from coordination.integrations.openai_agents import CoordinationHooks, run_guarded

log = logging.getLogger(__name__)

SPECIALISTS = {
    "billing": ("billing_specialist", ["refunds", "invoices", "subscriptions"]),
    "technical": ("tech_specialist", ["troubleshooting", "outages", "accounts"]),
    "sales": ("sales_specialist", ["plans", "quotes", "upgrades"]),
}
AGENT_CATEGORY = {name: category for category, (name, _) in SPECIALISTS.items()}
QUERIES = [
    ("I was charged twice for my subscription last month", None),
    ("Please refund order ORD-{n}, it arrived broken", None),
    ("I want a refund of $2,400 for the annual plan right now!", "refund over the limit"),
    ("The app crashes every time I log in", None),
    ("My password reset email never arrives", None),
    ("This is the third time I write, your product is broken and I am furious", "angry customer"),
    ("Can I get a quote for 50 seats on the business plan?", None),
    ("Do you offer a discount for nonprofits?", None),
]


@dataclass
class FleetSettings:
    sessions: int = 8  # sessions worked on at once
    rate: float = 12.0  # new sessions per minute
    duration: float = 0.0  # seconds; 0 runs until cancelled
    turns: tuple[int, int] = (2, 4)  # specialist replies per session
    pace: float = 1.5  # seconds between an agent's turns (0 in tests)
    escalation_chance: float = 0.25
    claim_ttl: float = 15.0
    pickup_after: float = 5.0  # seconds a session may wait before a specialist picks it up
    prefix: str = "demo"
    seed: int | None = None


@dataclass
class Fleet:
    """Runs the desk until cancelled (or ``duration`` ends)."""

    redis_url: str | None = None
    namespace: str | None = None
    settings: FleetSettings = field(default_factory=FleetSettings)
    offline: bool | None = None  # None: offline unless OPENAI_API_KEY is set

    def __post_init__(self) -> None:
        self.random = random.Random(self.settings.seed)
        self.atomic = AtomicOperations(self.redis_url, namespace=self.namespace)
        self.index = SessionIndex(self.redis_url, namespace=self.namespace)
        self.active: dict[str, asyncio.Task] = {}
        self.workers: dict[str, asyncio.Task] = {}
        self.outcomes: dict[str, str] = {}  # session id -> why its last agent stopped
        offline = not os.environ.get("OPENAI_API_KEY") if self.offline is None else self.offline
        model = ScriptedModel() if offline else None
        self.model = model  # the offline model (tests read what it was asked)
        if model is not None:
            set_tracing_disabled(True)
        self.triage_agent = Agent(
            name="triage",
            instructions="You are a triage agent. Answer with one word: billing, technical or sales.",
            **({"model": model} if model else {}),
        )
        self.specialists = {
            name: Agent(
                name=name,
                instructions=f"You are a {category} specialist of a support desk. Be brief and kind.",
                **({"model": model} if model else {}),
            )
            for category, (name, _) in SPECIALISTS.items()
        }

    def coordinator(self, session_id: str, source: str | None = None) -> AgentCoordinator:
        return AgentCoordinator(session_id, self.redis_url, namespace=self.namespace, source=source)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.duration if self.settings.duration else None
        tasks = [
            asyncio.create_task(self._presence(), name="presence"),
            asyncio.create_task(self._follow_feed(), name="feed"),
            asyncio.create_task(self._start_sessions(), name="sessions"),
            asyncio.create_task(self._pick_up_waiting(), name="pickup"),
        ]
        try:
            if deadline is None:
                await asyncio.gather(*tasks)
            else:
                await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        finally:
            for task in [*tasks, *self.active.values(), *self.workers.values()]:
                task.cancel()
            await asyncio.gather(
                *tasks, *self.active.values(), *self.workers.values(), return_exceptions=True
            )

    # -- presence ------------------------------------------------------------------------

    async def _presence(self) -> None:
        lobby = self.coordinator(f"{self.settings.prefix}-lobby")
        for name, capabilities in [("triage", ["triage"]), *SPECIALISTS.values()]:
            await lobby.publish(
                EventType.AGENT_READY,
                {"agent_id": name, "capabilities": list(capabilities), "load": 0.0},
                source=name,
            )
        while True:
            for name in ["triage", *(n for n, _ in SPECIALISTS.values())]:
                held = sum(1 for key in self.workers if key.endswith(f"|{name}"))
                await self.index.heartbeat(name, load=round(min(1.0, held / 4), 2))
            await asyncio.sleep(5)

    # -- new sessions: triage ----------------------------------------------------------------

    async def _start_sessions(self) -> None:
        n = 0
        while True:
            if len(self.active) < self.settings.sessions:
                n += 1
                session_id = f"{self.settings.prefix}-{uuid.uuid4().hex[:8]}"
                task = asyncio.create_task(self.triage(session_id, n))
                self.active[session_id] = task
                task.add_done_callback(lambda t, s=session_id: self._triaged(s, t))
            await asyncio.sleep(60.0 / self.settings.rate if self.settings.rate > 0 else 3600)

    async def triage(self, session_id: str, n: int = 0) -> str:
        query, escalation = self.random.choice(QUERIES)
        query = query.format(n=10000 + n)
        coord = self.coordinator(session_id, source="triage")
        await coord.publish(
            EventType.MESSAGE, {"role": "customer", "text": query}, source="customer"
        )
        await coord.update_state({"customer_query": query, "issue_status": "triage"}, by="triage")
        result = await run_guarded(self.triage_agent, query, coordinator=coord)
        category = next((c for c in SPECIALISTS if c in result.final_output.lower()), "sales")
        target = SPECIALISTS[category][0]
        await coord.set_state("category", category, by="triage")
        if escalation and self.random.random() < 0.5:
            await coord.set_state("escalation_hint", escalation, by="triage")
        await coord.publish(
            EventType.HANDOFF_READY,
            {
                "from_agent": "triage",
                "to_agent": target,
                "query": query,
                "triage_result": result.final_output,
            },
        )
        return target

    # -- specialists: follow the feed --------------------------------------------------------

    async def _follow_feed(self, cursor: str | None = None) -> None:
        cursor = cursor or await self.index.latest_feed_id()
        while True:
            for entry in await self.index.read_feed(cursor, count=200, block=1.0):
                cursor = entry.feed_id
                self._react(entry.event)

    def _react(self, event) -> None:
        sid, data = event.session_id, event.data
        if not sid.startswith(self.settings.prefix + "-") or sid.endswith("-lobby"):
            return
        if event.type is EventType.HANDOFF_READY and data.get("to_agent") in AGENT_CATEGORY:
            self._spawn(sid, data["to_agent"], claim=True)
        elif event.type is EventType.HANDOFF_REASSIGNED and data.get("to_agent") in AGENT_CATEGORY:
            self._spawn(sid, data["to_agent"], claim=False)
        elif event.type is EventType.HUMAN_HANDBACK:
            if data.get("to_agent") in AGENT_CATEGORY:
                self._spawn(sid, data["to_agent"], claim=False)
            else:  # back to the queue: the specialist of the session's category claims it
                self._spawn(sid, None, claim=True)
        elif event.type is EventType.HANDOFF_RELEASED and (
            data.get("forced") or str(data.get("by") or "").startswith("human:")
        ):
            # a supervisor released the claim: the session waits; a specialist picks it up
            self._spawn(sid, None, claim=True, delay=3.0)

    async def _pick_up_waiting(self) -> None:
        """Specialists claim sessions left waiting (a released claim, a hand-back to the
        queue whose claimer lost the race), so none stays waiting for good."""
        key = self.index.keys.status["waiting"]
        while True:
            now_ms = time.time() * 1000
            rows = await self.index.call(self.index.redis.zrange(key, 0, 99, withscores=True))
            for sid, since_ms in rows:
                if not sid.startswith(self.settings.prefix + "-") or sid.endswith("-lobby"):
                    continue
                if now_ms - since_ms >= self.settings.pickup_after * 1000:
                    if not any(k.startswith(sid + "|") for k in self.workers):
                        self._spawn(sid, None, claim=True)
            await asyncio.sleep(max(0.2, min(2.0, self.settings.pickup_after / 2)))

    def _spawn(
        self, session_id: str, agent: str | None, *, claim: bool, delay: float = 0.0
    ) -> None:
        key = f"{session_id}|{agent}"
        if key in self.workers:
            return
        task = asyncio.create_task(self.specialist(session_id, agent, claim=claim, delay=delay))
        self.workers[key] = task
        task.add_done_callback(lambda t, k=key: self._finished(k, t))

    def _triaged(self, session_id: str, task: asyncio.Task) -> None:
        self.active.pop(session_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("triage failed in %s: %r", session_id, task.exception())

    def _finished(self, key: str, task: asyncio.Task) -> None:
        self.workers.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self.outcomes[key.split("|", 1)[0]] = task.result()
        elif not task.cancelled():
            log.warning("demo agent failed in %s: %r", key, task.exception())

    async def specialist(
        self, session_id: str, agent: str | None, *, claim: bool, delay: float = 0.0
    ) -> str:
        """Work one session: claim it (unless it was given to us), answer a few turns, then
        resolve or escalate. Returns why it stopped."""
        if delay:
            await asyncio.sleep(delay * (self.settings.pace > 0))
        coord = self.coordinator(session_id)
        if agent is None:
            category = await coord.get_state("category", "sales")
            agent = SPECIALISTS.get(category, SPECIALISTS["sales"])[0]
        coord.source = agent
        if claim and not await self.atomic.claim_handoff(
            session_id, agent, ttl=self.settings.claim_ttl
        ):
            return "not claimed"
        hooks = CoordinationHooks(coord)
        query = await coord.get_state("customer_query", "")
        # what people replied, noted and decided: the agent continues from it
        humans = await read_human_context(coord)
        prompt = humans.as_input(query)
        try:
            await coord.set_state("issue_status", "in_progress", by=agent)
            await coord.set_state("current_agent", agent, by=agent)
            for turn in range(self.random.randint(*self.settings.turns)):
                await asyncio.sleep(self.settings.pace * self.random.uniform(0.5, 1.5))
                await hooks.check_control()  # before the claim: a takeover also ends the claim
                await self.atomic.renew_handoff(session_id, agent, ttl=self.settings.claim_ttl)
                result = await run_guarded(
                    self.specialists[agent], prompt, coordinator=coord, hooks=hooks
                )
                await coord.publish(
                    EventType.MESSAGE,
                    {"role": "agent", "text": result.final_output, "turn": turn + 1},
                    guard=True,
                )
                hint = await coord.get_state("escalation_hint")
                if hint in humans.resolved:
                    hint = None  # a human resolved it: do not ask again
                chance = 0.0 if humans.handed_back else self.settings.escalation_chance / 3
                if hint or self.random.random() < chance:
                    await coord.escalate(hint or "customer asked for a manager", source=agent)
                    await self.atomic.release_handoff(session_id, agent)
                    return "escalated"
            await hooks.check_control()
            await coord.set_state("issue_status", "resolved", by=agent)
            await self.atomic.release_handoff(session_id, agent)
            await coord.close(by=agent, reason="resolved")
            return "resolved"
        except SessionTakenOver:
            return "taken over"
        except NotOwner:
            return "claim lost"  # released or reassigned by a supervisor: stop quietly
        except CoordinationError as exc:
            log.info("demo agent %s stopped in %s: %s", agent, session_id, exc)
            return "stopped"
