"""The demo fleet: the guide's support desk (triage, then billing / technical / sales
specialists) over many sessions at once, with the real core. It obeys supervisors: a takeover
stops the agent before its next turn, a hand-back or reassignment hands the session to the
named agent, a forced release stops the holder and the session goes back to the queue.
An agent that continues a session after a hand-back reads what the humans said and decided
(replies, notes, the hand-back's resolution) and does not escalate again for a reason a human
resolved. Sessions left waiting (a released claim) are picked up by the category's specialist.

Approvals: the billing specialist refunds with a ``refund`` tool that needs a supervisor's
approval above ``REFUND_LIMIT`` (``needs_approval``, through ``run_guarded``). Two of the ten
customer queries ask for such a refund and the queries are dealt like a shuffled deck, so the
first approval request appears within the first ten sessions (under a minute at the default
rate). The run pauses, the dashboard shows the request; approved, the tool runs once and the
agent tells the customer; rejected, the agent tells the customer why, with the supervisor's
message. A request nobody decides expires (``approval_expires_in``) and the agent escalates;
a takeover, release or close while it waits stops the agent (the paused run stays saved and
the specialist that continues the session after a hand-back resumes it).

Offline by default (a scripted model); with ``OPENAI_API_KEY`` set it uses real models.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
import uuid
from dataclasses import dataclass, field

from agents import Agent, function_tool, set_tracing_disabled
from agents.items import ToolCallOutputItem

from coordination.core import (
    AgentCoordinator,
    AtomicOperations,
    CoordinationError,
    DecisionTimeout,
    DecisionVerifier,
    EventType,
    NotOwner,
    SessionIndex,
    SessionTakenOver,
    UnverifiedDecision,
)
from coordination.devtools.scripted_model import ScriptedModel, ToolCall, support_desk_reply
from coordination.integrations.human_context import read_human_context
from coordination.integrations.openai_agents import (
    CoordinationHooks,
    resume_pending,
    run_guarded,
)

log = logging.getLogger(__name__)

SPECIALISTS = {
    "billing": ("billing_specialist", ["refunds", "invoices", "subscriptions"]),
    "technical": ("tech_specialist", ["troubleshooting", "outages", "accounts"]),
    "sales": ("sales_specialist", ["plans", "quotes", "upgrades"]),
}
AGENT_CATEGORY = {name: category for category, (name, _) in SPECIALISTS.items()}
# (query, escalation hint, refund the billing specialist makes: amount in dollars)
QUERIES: list[tuple[str, str | None, float | None]] = [
    ("I was charged twice for my subscription last month", None, None),
    ("Please refund order ORD-{n}, it arrived broken", None, 39.0),
    ("Please refund the $240 I paid for order ORD-{n}: it never arrived", None, 240.0),
    ("I was charged $180 twice for order ORD-{n}, refund one of them please", None, 180.0),
    ("I want a refund of $2,400 for the annual plan right now!", "refund over the limit", None),
    ("The app crashes every time I log in", None, None),
    ("My password reset email never arrives", None, None),
    (
        "This is the third time I write, your product is broken and I am furious",
        "angry customer",
        None,
    ),
    ("Can I get a quote for 50 seats on the business plan?", None, None),
    ("Do you offer a discount for nonprofits?", None, None),
]
REFUND_LIMIT = 100.0  # dollars; a larger refund waits for a supervisor's approval
# How often a specialist waiting for a decision looks up: a takeover, a release or a close
# stops it within this time, and it renews its claim meanwhile.
APPROVAL_CHECK_SECONDS = 1.0
_REFUND_MARK = re.compile(r"\[refund order=([^\s\]]+) amount=([0-9]{1,9}(?:\.[0-9]{1,2})?)\]")
_EDITED_HEAD = "approved this call only with these arguments: "
_EDITED_TAIL = ". Call refund again"


def refund_mark(order_id: str, amount: float) -> str:
    """The line a specialist's input carries while a refund is still to be made."""
    return f"[refund order={order_id} amount={amount:.2f}]"


def edited_arguments(text: str) -> dict | None:
    """The arguments a supervisor approved instead of the model's, from the text the model
    reads (``rejection_text``); None unless they are a JSON object. The supervisor's message
    may follow and may contain anything, so each place the sentence could end is tried."""
    body = text.split(_EDITED_HEAD, 1)[1]
    end = body.find(_EDITED_TAIL)
    while end != -1:
        try:
            value = json.loads(body[:end])
        except ValueError:
            end = body.find(_EDITED_TAIL, end + 1)
            continue
        return value if isinstance(value, dict) else None
    return None


def demo_reply(instructions: str, text: str) -> str | ToolCall:
    """The offline model of the demo desk: the support-desk default, plus the billing
    specialist's refunds (a tool call, then an answer from the tool's output or from the
    supervisor's decision)."""
    if text.startswith("Refunded "):
        return f"Done: {text} You will see it on your statement in a few days."
    if text.startswith("No supervisor decided"):
        return (
            "I could not get your refund approved in time. I am passing your case to a "
            "colleague who will get back to you."
        )
    if text.startswith("A human supervisor") and _EDITED_HEAD in text:
        edited = edited_arguments(text)
        if edited is None:
            return "I am sorry, I cannot make this refund with the amount our supervisor set."
        return ToolCall("refund", edited)
    if text.startswith("A human supervisor"):
        _, _, message = text.partition("rejected this tool call")
        message = message.lstrip(":. ").strip()
        because = f" Our supervisor says: {message}" if message else ""
        return f"I am sorry, I cannot make this refund.{because}"
    # the last mark: the specialist appends it after what people wrote (which may hold one)
    mark = next(reversed(list(_REFUND_MARK.finditer(text))), None)
    if mark and "billing" in instructions.lower():
        return ToolCall(
            "refund",
            {
                "order_id": mark.group(1),
                "amount": float(mark.group(2)),
                "reason": (
                    f"over the ${REFUND_LIMIT:,.0f} agent limit"
                    if float(mark.group(2)) > REFUND_LIMIT
                    else "within the agent limit"
                ),
            },
        )
    return support_desk_reply(instructions, _REFUND_MARK.sub("", text).strip())


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
    approval_expires_in: float = 180.0  # seconds a refund approval may wait for a decision
    prefix: str = "demo"
    seed: int | None = None


@dataclass
class Fleet:
    """Runs the desk until cancelled (or ``duration`` ends)."""

    redis_url: str | None = None
    namespace: str | None = None
    settings: FleetSettings = field(default_factory=FleetSettings)
    offline: bool | None = None  # None: offline unless OPENAI_API_KEY is set
    # checks that a person made each decision; None: COORDINATION_DECISION_KEY when set
    verifier: DecisionVerifier | None = None

    def __post_init__(self) -> None:
        self.random = random.Random(self.settings.seed)
        self.atomic = AtomicOperations(self.redis_url, namespace=self.namespace)
        self.index = SessionIndex(self.redis_url, namespace=self.namespace)
        self.active: dict[str, asyncio.Task] = {}
        self.workers: dict[str, asyncio.Task] = {}
        self.outcomes: dict[str, str] = {}  # session id -> why its last agent stopped
        offline = not os.environ.get("OPENAI_API_KEY") if self.offline is None else self.offline
        model = ScriptedModel(demo_reply) if offline else None
        self.model = model  # the offline model (tests read what it was asked)
        if model is not None:
            set_tracing_disabled(True)
        self.triage_agent = Agent(
            name="triage",
            instructions="You are a triage agent. Answer with one word: billing, technical or sales.",
            **({"model": model} if model else {}),
        )
        self.refunds: list[tuple[str, float]] = []  # (order, amount) of each refund made
        self._deck: list[tuple[str, str | None, float | None]] = []

        async def over_limit(context, params: dict, call_id: str) -> bool:
            amount = params.get("amount")
            return not isinstance(amount, (int, float)) or amount > REFUND_LIMIT

        @function_tool(needs_approval=over_limit)
        def refund(order_id: str, amount: float, reason: str) -> str:
            """Refund ``amount`` dollars on an order. Above the limit a supervisor approves."""
            self.refunds.append((order_id, amount))
            return f"Refunded ${amount:,.2f} on order {order_id}."

        self.refund_tool = refund
        self.specialists = {
            name: Agent(
                name=name,
                instructions=f"You are a {category} specialist of a support desk. Be brief and kind."
                + (
                    " A line [refund order=... amount=...] in the input asks you to make that "
                    "refund with the refund tool."
                    if category == "billing"
                    else ""
                ),
                tools=[refund] if category == "billing" else [],
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

    def next_query(self) -> tuple[str, str | None, float | None]:
        """The next customer query: the queries in a shuffled order, each once per round, so
        every kind (a refund that needs approval too) comes up within ``len(QUERIES)``."""
        if not self._deck:
            self._deck = self.random.sample(QUERIES, len(QUERIES))
        return self._deck.pop()

    async def triage(self, session_id: str, n: int = 0) -> str:
        query, escalation, refund = self.next_query()
        query = query.format(n=10000 + n)
        coord = self.coordinator(session_id, source="triage")
        await coord.publish(
            EventType.MESSAGE, {"role": "customer", "text": query}, source="customer"
        )
        state: dict = {"customer_query": query, "issue_status": "triage"}
        if refund is not None:
            state["refund_request"] = {"order_id": f"ORD-{10000 + n}", "amount": refund}
        await coord.update_state(state, by="triage")
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
                refund = await self._refund_to_make(coord)
                turn_input = f"{prompt}\n{refund_mark(*refund)}" if refund else prompt
                result = await self._answer(session_id, agent, turn_input, coord, hooks)
                await coord.publish(
                    EventType.MESSAGE,
                    {"role": "agent", "text": result.final_output, "turn": turn + 1},
                    guard=True,
                )
                if await self._refund_to_make(coord):  # still to do: did this turn make it?
                    outcome = refund_outcome(result)
                    if outcome is not None:
                        await coord.set_state("refund_status", outcome, by=agent)
                    if outcome == "expired":
                        await coord.escalate("refund approval expired", source=agent)
                        await self.atomic.release_handoff(session_id, agent)
                        return "escalated"
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
        except UnverifiedDecision:
            # a decision the dashboard did not sign (written with an agent's credentials):
            # the refund is not made; people look at it
            log.warning("demo agent %s refused an unsigned decision in %s", agent, session_id)
            try:
                await self._forget_saved_runs(coord, agent)
                await coord.set_state("refund_status", "unverified", by=agent)
                await coord.escalate("unverified refund decision", source=agent)
                await self.atomic.release_handoff(session_id, agent)
            except CoordinationError:
                return "stopped"
            return "escalated"
        except CoordinationError as exc:
            log.info("demo agent %s stopped in %s: %s", agent, session_id, exc)
            return "stopped"

    # -- refunds: approvals ----------------------------------------------------------------

    @staticmethod
    async def _refund_to_make(coord: AgentCoordinator) -> tuple[str, float] | None:
        """The refund this session still needs (order, amount), or None."""
        request = await coord.get_state("refund_request")
        if not isinstance(request, dict) or await coord.get_state("refund_status"):
            return None
        order, amount = request.get("order_id"), request.get("amount")
        if not isinstance(order, str) or not isinstance(amount, (int, float)):
            return None
        return order, float(amount)

    async def _answer(
        self,
        session_id: str,
        agent: str,
        turn_input: str,
        coord: AgentCoordinator,
        hooks: CoordinationHooks,
    ):
        """One turn of ``agent``: resume its paused run if the session holds one (a hand-back
        after a takeover while it waited), else a new run. Waits for approvals in short slices
        so a takeover (``SessionTakenOver``), a lost claim (``NotOwner``) or a closed session
        stops it promptly; the paused run stays saved meanwhile."""
        specialist = self.specialists[agent]
        options = {
            "coordinator": coord,
            "hooks": hooks,
            "approval_timeout": APPROVAL_CHECK_SECONDS,
            "approval_expires_in": self.settings.approval_expires_in,
            "verifier": self.verifier,
        }
        resume = await self._has_saved_run(coord, agent)
        while True:
            try:
                if resume:
                    results = await resume_pending(specialist, **options)
                    if results:
                        return results[-1]
                    resume = False  # claimed elsewhere: nothing of ours to resume
                    continue
                return await run_guarded(specialist, turn_input, **options)
            except DecisionTimeout:
                await hooks.check_control()
                await self.atomic.renew_handoff(session_id, agent, ttl=self.settings.claim_ttl)
                resume = True

    @staticmethod
    async def _has_saved_run(coord: AgentCoordinator, agent: str) -> bool:
        saved = await coord.saved_runs()
        return any(
            isinstance(record, dict) and record.get("agent") == agent and claim is None
            for record, claim in saved.values()
        )

    @staticmethod
    async def _forget_saved_runs(coord: AgentCoordinator, agent: str) -> None:
        for name, (record, _) in (await coord.saved_runs()).items():
            if isinstance(record, dict) and record.get("agent") == agent:
                await coord.delete_run(name)


def refund_outcome(result) -> str | None:
    """What became of the refund in a finished run: "refunded", "rejected" (a supervisor
    said no), "expired" (nobody decided in time), or None (no refund was tried)."""
    outputs = [
        item.output
        for item in result.new_items
        if isinstance(item, ToolCallOutputItem) and isinstance(item.output, str)
    ]
    if not outputs:
        return None
    last = outputs[-1]
    if last.startswith("Refunded "):
        return "refunded"
    if last.startswith("No supervisor decided"):
        return "expired"
    return "rejected"
