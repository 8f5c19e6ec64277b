"""Websocket consumers. Both refuse anonymous users, render the pages' own partials, and
catch up after a reconnect: the browser says which event it saw last, the consumer replays
what came after from Redis, then forwards live events, dropping any it already sent."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import secrets
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import escape

from coordination.core import CoordinationError, EventType, InvalidCursor, RedisUnavailable
from coordination.core.connection import UNAVAILABLE_ERRORS, redis_failures
from coordination.core.coordinator import validate_event_id
from coordination.core.keys import validate_session_id
from coordination.dashboard.fragments import (
    SUMMARY_EVENTS,
    SessionFilters,
    dom_id,
    event_item,
    header_context,
    overview_context,
    recent_audit,
    render_session_row,
)
from coordination.dashboard.transcript import TRANSCRIPT_TYPES, LiveTranscript
from coordination.foundation.core_clients import coordinator, session_index
from coordination.foundation.telemetry import count_slow_client_cutoff, open_websockets
from coordination.realtime.groups import SESSIONS_GROUP, session_group
from coordination.realtime.relay import parse_event_id

log = logging.getLogger(__name__)
_background: set[asyncio.Task] = set()

REPLAY_LIMIT = 5000
BUFFER_LIMIT = 10_000
# Bounds in bytes of rendered rows (each row's payload is already cut, see coordination.foundation.display):
# one frame, one replay, and the live rows held until the page says where to resume.
FRAME_BYTES = 256 * 1024
REPLAY_BYTES = 2 * 1024 * 1024
BUFFER_BYTES = 4 * 1024 * 1024
REPLAY_PAGE = 25  # events read per round trip while replaying (each at most the payload limit)
OUTBOX_BYTES = 8 * 1024 * 1024  # frames waiting for one client that does not read
CLOSE_UNAUTHENTICATED = 4401
CLOSE_BAD_REQUEST = 4400
MAX_FRAME_CHARS = 4096  # the pages send {"resume": "<event id>"} and nothing else
CLOSE_TRY_AGAIN = 1013  # the htmx ws extension reconnects after 1006, 1011, 1012 and 1013
REDIS_CHECK_SECONDS = 3.0
REDIS_CHECK_TIMEOUT = 2.0
# The wrappers around pushed rows: named partials, like the rows themselves.
PUSH = "coordination/_live_push.html#"


def _size(item: dict) -> int:
    """Bytes a rendered row takes in a frame (rows hold any text an agent wrote)."""
    return len(item["html"].encode("utf-8"))


class LoginRequiredConsumer(AsyncJsonWebsocketConsumer):
    # What this consumer takes from the channel layer: only these types, never ``websocket.*``
    # (those come from the ASGI server alone). The layer already drops what no dashboard
    # process sealed; this keeps a sealed message of the wrong kind from being dispatched.
    layer_message_types: frozenset[str] = frozenset()

    @property
    def channel_receive(self):
        return self._layer_receive

    @channel_receive.setter
    def channel_receive(self, receive):
        # Channels' AsyncConsumer.__call__ sets this to the layer's receive for our channel.
        async def accepted() -> dict:
            while True:
                message = await receive()
                if message.get("type") in self.layer_message_types:
                    return message
                log.warning(
                    "%s ignored a channel-layer message of type %.60r",
                    type(self).__name__,
                    message.get("type"),
                )

        self._layer_receive = accepted

    # -- the outbox: frames wait here, not in the handler, for a client that reads slowly ----

    @property
    def base_send(self):
        return self._queue_for_client

    @base_send.setter
    def base_send(self, send):
        # Channels' AsyncConsumer.__call__ sets this to the ASGI server's send. Awaiting that
        # send directly would stall this consumer while its client does not read, and the
        # channel layer would keep queueing messages for it in memory without bound.
        self._server_send = send
        self._outbox: collections.deque[tuple[dict, int]] = collections.deque()
        self._outbox_bytes = 0
        self._outbox_closed = False
        self._writer: asyncio.Task | None = None

    async def _queue_for_client(self, message: dict) -> None:
        """Queue a message for the client and return at once. Past ``OUTBOX_BYTES`` waiting,
        the client is not keeping up: what waits is dropped and the socket is closed with
        1013 (the page reconnects and its replay, bounded too, catches up from Redis)."""
        if self._outbox_closed:
            return
        size = 0
        if message.get("type") == "websocket.send":
            size = len((message.get("text") or "").encode("utf-8")) + len(
                message.get("bytes") or b""
            )
            if self._outbox_bytes + size > OUTBOX_BYTES:
                log.warning(
                    "closing a websocket whose client does not read (%d bytes waiting)",
                    self._outbox_bytes,
                )
                self._outbox.clear()
                self._outbox_bytes, size = 0, 0
                message = {"type": "websocket.close", "code": CLOSE_TRY_AGAIN}
                # counted in /metrics; kept by the task set so it is not collected mid-flight
                counting = asyncio.create_task(count_slow_client_cutoff(session_index()))
                _background.add(counting)
                counting.add_done_callback(_background.discard)
        if message.get("type") == "websocket.close":
            self._outbox_closed = True
        self._outbox.append((message, size))
        self._outbox_bytes += size
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_outbox())

    async def _write_outbox(self) -> None:
        """Hand queued messages to the server, in order, as fast as the client takes them;
        the task ends once the outbox is empty and the next message starts another. Nothing of
        a socket waits between two notices: a writer that waited on an event kept a task and a
        fresh future per socket alive from one notice to the next, objects every full garbage
        collection walks (issue 18: with 1,000 pages the server's RSS went 222 -> 189 MB with
        this change)."""
        try:
            while self._outbox:
                message, size = self._outbox.popleft()
                try:
                    await self._server_send(message)
                except Exception as exc:  # the client is gone; its disconnect ends the consumer
                    log.debug("websocket send failed: %s", exc)
                    self._outbox.clear()
                    self._outbox_bytes = 0
                    self._outbox_closed = True
                    return
                self._outbox_bytes -= size
                if message.get("type") == "websocket.close":
                    return
        finally:
            self._writer = None

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        """A frame from the browser is untrusted: one that is binary, empty, too long, not
        JSON (or nested past the parser) or not a JSON object is answered with an error frame
        and otherwise ignored. Channels' own ``receive`` would raise and log a traceback."""
        if not text_data or len(text_data) > MAX_FRAME_CHARS:
            await self.send_json(
                {"error": f"expected a JSON object of at most {MAX_FRAME_CHARS} characters"}
            )
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):
            await self.send_json({"error": "the frame is not JSON"})
            return
        if not isinstance(content, dict):
            await self.send_json({"error": "expected a JSON object"})
            return
        await self.receive_json(content, **kwargs)

    async def websocket_connect(self, message):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        self.can_intervene = await database_sync_to_async(user.has_perm)("coordination.intervene")
        # Live fragments hold forms too; without a request they need the token given to them.
        self.csrf_token = self.scope.get("cookies", {}).get(settings.CSRF_COOKIE_NAME, "")
        try:
            await asyncio.wait_for(session_index().redis.ping(), REDIS_CHECK_TIMEOUT)
            await super().websocket_connect(message)
        except (RedisUnavailable, TimeoutError, *UNAVAILABLE_ERRORS) as exc:
            if not isinstance(exc, RedisUnavailable):
                redis_failures.add()
            log.warning("websocket refused while Redis is unavailable: %s", exc)
            await self.close(code=CLOSE_TRY_AGAIN)
            return
        self._redis_watch = RedisWatch.join(self)
        open_websockets.opened()

    async def websocket_disconnect(self, message):
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.cancel()  # the client is gone: what it did not take is dropped
        watch = getattr(self, "_redis_watch", None)
        if watch is not None:
            watch.leave(self)
            open_websockets.closed()
        await super().websocket_disconnect(message)


class RedisWatch:
    """Closes the open sockets when Redis stops answering: the pages then show "disconnected"
    and keep reconnecting; once Redis is back, the reconnect replays what was missed.

    One check every ``REDIS_CHECK_SECONDS`` per process (event loop) and Redis, shared by its
    open sockets: one check per socket cost 1,000 pings every 3 s with 1,000 pages open (and,
    on a busy loop, pings that missed their 2 s deadline closed healthy sockets)."""

    _watches: dict[tuple, RedisWatch] = {}

    def __init__(self, key: tuple) -> None:
        self.key = key
        self.sockets: set[LoginRequiredConsumer] = set()
        self.task = asyncio.get_running_loop().create_task(self._run())

    @classmethod
    def join(cls, consumer: LoginRequiredConsumer) -> RedisWatch:
        key = (asyncio.get_running_loop(), settings.REDIS_URL, settings.COORDINATION_NAMESPACE)
        watch = cls._watches.get(key)
        if watch is None or watch.task.done():
            watch = cls._watches[key] = cls(key)
        watch.sockets.add(consumer)
        return watch

    def leave(self, consumer: LoginRequiredConsumer) -> None:
        self.sockets.discard(consumer)
        if not self.sockets:
            self.task.cancel()
            if self._watches.get(self.key) is self:
                del self._watches[self.key]

    async def _run(self) -> None:
        client = session_index().redis
        while True:
            await asyncio.sleep(REDIS_CHECK_SECONDS)
            try:
                await asyncio.wait_for(client.ping(), REDIS_CHECK_TIMEOUT)
            except (RedisUnavailable, TimeoutError, *UNAVAILABLE_ERRORS) as exc:
                if not isinstance(exc, RedisUnavailable):
                    redis_failures.add()
                closing, self.sockets = self.sockets, set()
                for consumer in closing:
                    await consumer.close(code=CLOSE_TRY_AGAIN)


MAX_SHOWN_ROWS = 5000  # rows a list page is told about (a page of 50 grows by live rows)
_ROW_DIGEST = re.compile(r"[0-9a-f]{20}")

# -- one read and one render per notice and process, not per page ----------------------------
#
# Every open overview or sessions list in a process gets each ``sessions.changed`` notice. Read
# and rendered page by page, 1,000 open pages meant 1,000 reads of the same summaries and
# 1,000 renders of the same partials per notice, in the one event loop that also answers
# /healthz (issue 18: 600 overview pages pushed its median to 1.35 s). So the process's one
# ``NoticeHub`` hands each notice to its pages in turn; the first page reads and renders for
# all (``NoticeWork``), the others take the text.
# What still differs between pages is small and applied to the shared text: the row variant
# (the viewer may intervene or not, the list's filters) and the page's own CSRF token.

# The overview's live parts, each swapped in place by id: the partials of
# ``render_overview_live``, in its order (tests/web/test_fanout.py holds them equal). A page is
# sent only the parts whose text changed since its socket last sent them.
OVERVIEW_PARTS = (
    "coordination/overview.html#stats",
    "coordination/overview.html#queue",
    "coordination/overview.html#agents",
    "coordination/_approvals.html#overview-approvals",
    "coordination/_pickup.html#overview-pickup",
)
NOTICES_KEPT = 8  # notices whose shared work is kept (a resent or repeated name reuses it)
FAN_OUT_SLICE = 50  # pages handed a notice between two yields to the event loop
NOTICE_KEY_CHARS = 200
# Rendered in place of a page's CSRF token, then replaced by the page's own (escaped) token.
# Random per process: agent-written text cannot contain it, so only the form fields get it.
CSRF_MARK = "csrfmark" + secrets.token_hex(16)


def _notice_key(message: dict) -> str | None:
    key = message.get("notice")
    if isinstance(key, str) and 0 < len(key) <= NOTICE_KEY_CHARS:
        return key
    return None  # an older relay: each page reads and renders for itself, as before


class NoticeWork:
    """What the pages of this process need for one notice, computed once and shared: reads as
    shared tasks (awaited through ``shield``: a page that closes meanwhile does not cancel the
    others' read), renders as memoised text."""

    _kept: collections.OrderedDict[tuple, NoticeWork] = collections.OrderedDict()

    def __init__(self) -> None:
        self.tasks: dict[object, asyncio.Task] = {}
        self.texts: dict[object, str] = {}

    @classmethod
    def of(cls, key: str | None) -> NoticeWork:
        if key is None:
            return cls()  # not shared
        # tasks belong to one event loop; names are the relay's, per deployment (namespace)
        key = (asyncio.get_running_loop(), settings.COORDINATION_NAMESPACE, key)
        work = cls._kept.get(key)
        if work is None:
            work = cls._kept[key] = cls()
            while len(cls._kept) > NOTICES_KEPT:
                cls._kept.popitem(last=False)
        return work

    async def read(self, what: object, make):
        """``await make()``, once for every page handling this notice."""
        task = self.tasks.get(what)
        if task is None:
            task = self.tasks[what] = asyncio.ensure_future(make())
        return await asyncio.shield(task)

    def text(self, what: object, render) -> str:
        """``render()``, once for every page handling this notice."""
        text = self.texts.get(what)
        if text is None:
            text = self.texts[what] = render()
        return text


# Labels the page's script keeps current every second from the element's own timestamp
# (app.js refreshTimes: "12s ago", "4m left"): a part whose labels alone changed is not sent
# again. Only template-made tags match: agent-written text is escaped and holds no "<".
_TICKING_LABEL = re.compile(
    r'(<(time|span)\b[^<>]*\bdata-(?:ts|sla-clock|expires)="-?[0-9]+"[^<>]*>)[^<]*(</\2>)'
)


def steady_text(text: str) -> str:
    """``text`` without the labels the page's script keeps current (for comparing only)."""
    return _TICKING_LABEL.sub(r"\1\3", text)


def with_csrf_token(text: str, token: str) -> str:
    """The shared text with this page's token where ``{% csrf_token %}`` put the mark: the same
    markup as rendering with the token (``format_html`` escapes it the same way)."""
    return text.replace(CSRF_MARK, escape(token)) if CSRF_MARK in text else text


def _csrf_variant(token: str) -> str:
    """The token to render with: the mark, unless the tag treats the value specially (empty:
    no field; "NOTPROVIDED": no field either)."""
    return token if token in ("", "NOTPROVIDED") else CSRF_MARK


class NoticeHub:
    """The process's one member of ``SESSIONS_GROUP``: it receives each notice once and hands
    it to the open overview and list pages of the process in turn, in one pass.

    Each page in the group had the notice delivered on its own (a queue, a task wake-up, the
    seal checked, the message unpacked, a dispatch), which was most of what a page still cost
    per notice once reads and renders were shared; and every step of those 1,000 deliveries
    was one more turn of the event loop that /healthz waited behind."""

    _hubs: dict[tuple, NoticeHub] = {}

    def __init__(self, layer, key: tuple) -> None:
        self.layer = layer
        self.key = key
        self.pages: dict[SessionsConsumer, None] = {}  # an ordered set
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()
        self.task = loop.create_task(self._run())

    @classmethod
    async def join(cls, page: SessionsConsumer) -> NoticeHub:
        """Add ``page``; returns once the hub is in the group (notices sent after this reach
        the page)."""
        layer = get_channel_layer()
        key = (asyncio.get_running_loop(), id(layer))
        hub = cls._hubs.get(key)
        if hub is None or hub.task.done():
            hub = cls._hubs[key] = cls(layer, key)
        hub.pages[page] = None
        try:
            await asyncio.shield(hub.ready)
        except BaseException:
            hub.leave(page)
            raise
        return hub

    def leave(self, page: SessionsConsumer) -> None:
        self.pages.pop(page, None)
        if not self.pages:
            self.task.cancel()
            if self._hubs.get(self.key) is self:
                del self._hubs[self.key]

    async def _run(self) -> None:
        try:
            channel = await self.layer.new_channel("sessions-hub.")
            await self.layer.group_add(SESSIONS_GROUP, channel)
        except BaseException as exc:
            self.ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            raise
        self.ready.set_result(None)
        try:
            while True:
                message = await self.layer.receive(channel)
                if message.get("type") != "sessions.changed":
                    log.warning("the sessions hub ignored a %.60r message", message.get("type"))
                    continue
                await self.fan_out(message)
        finally:
            with contextlib.suppress(Exception):
                await self.layer.group_discard(SESSIONS_GROUP, channel)

    async def fan_out(self, message: dict) -> None:
        """Every page of this process, in turn: the first reads and renders (awaited), the
        others take the text and queue their frame, ``FAN_OUT_SLICE`` pages between two
        yields to the event loop."""
        key = _notice_key(message)
        work = NoticeWork.of(key) if key else NoticeWork()
        failed = 0
        for n, page in enumerate(list(self.pages)):
            if n and not n % FAN_OUT_SLICE:
                # let the requests and the frames queued meanwhile through (/healthz waits
                # for a slice of pages, not for all of them)
                await asyncio.sleep(0)
            try:
                await page.sessions_changed(message, work)
            except Exception:
                failed += 1
                if failed == 1:
                    log.exception("a live update failed (further failures are counted)")
        if failed > 1:
            log.warning("a live update failed for %d pages", failed)


class SessionsConsumer(LoginRequiredConsumer):
    """The overview and the sessions list: coalesced ``sessions.changed`` notices from the relay,
    handed over by the process's ``NoticeHub``."""

    # No channel of its own: the hub receives the notices, and nothing else is sent to these
    # pages through the layer. Channels subscribes a channel per consumer (a Redis SUBSCRIBE,
    # a queue and a waiting receive: ~40 objects a socket the garbage collector walks on every
    # full collection, and a round trip to Redis on each open and close).
    channel_layer_alias = "coordination.no-channel"  # not configured: get_channel_layer() is None

    async def connect(self):
        # a query string that is not UTF-8 is malformed input, not a reason to fail the socket
        raw_query = self.scope.get("query_string", b"").decode("utf-8", "replace")
        query = {k: v[-1] for k, v in parse_qs(raw_query).items()}
        self.view = "list" if query.get("view") == "list" else "overview"
        self.filters = SessionFilters.from_query(query)
        self.first_page = query.get("first") == "1"
        # The list's rows on the page (digests of their DOM ids, sent by the page): a push
        # deletes or redraws only those; an out-of-band swap whose target the page lacks is a
        # console error (htmx:oobErrorNoTarget) on every event of a session not listed there.
        digests = query.get("rows", "").split(",")[:MAX_SHOWN_ROWS]
        self.shown = {f"session-{d}" for d in digests if _ROW_DIGEST.fullmatch(d)}
        self.index = session_index()
        self._hub = await NoticeHub.join(self)
        await self.accept()

    async def disconnect(self, code):
        hub = getattr(self, "_hub", None)
        if hub is not None:
            hub.leave(self)

    async def receive_json(self, content, **kwargs):
        if isinstance(content, dict) and "resume" in content and self.view == "overview":
            await self._send_overview()  # after a reconnect, redraw what may have changed

    async def sessions_changed(self, message: dict, work: NoticeWork) -> None:
        # Called by the hub, not dispatched by Channels: no close_old_connections() thread hop
        # per page and notice (a notice touches no database; /healthz's database check used
        # to queue behind 1,000 of them).
        try:
            if self.view == "overview":
                await self._send_overview(work)
            else:
                await self._send_rows(message["ids"], work)
        except RedisUnavailable as exc:
            log.warning("live update skipped: %s", exc)

    async def _send_overview(self, work: NoticeWork | None = None):
        """The overview's live parts that changed since this socket last sent them, ticking
        labels aside (all of them the first time, and after a reconnect: the page asks with
        ``resume``)."""
        fresh = work is None
        work = work or NoticeWork()
        context = await work.read("overview", lambda: overview_context(self.index))
        context = {**context, "can_intervene": self.can_intervene, "oob": True}
        token = _csrf_variant(self.csrf_token)
        context["csrf_token"] = token
        sent = self._overview_sent = {} if fresh else getattr(self, "_overview_sent", {})
        changed = []
        for template in OVERVIEW_PARTS:
            key = ("overview", template, self.can_intervene, token)
            text = work.text(key, lambda template=template: render_to_string(template, context))
            steady = work.text(("steady", *key), lambda text=text: steady_text(text))
            if sent.get(template) != steady:
                sent[template] = steady
                changed.append(text)
        if changed:
            await self.send(text_data=with_csrf_token("".join(changed), self.csrf_token))

    async def _send_rows(self, session_ids: list[str], work: NoticeWork | None = None):
        work = work or NoticeWork()
        summaries = await work.read("summaries", lambda: self.index.get_sessions(session_ids))
        removed, on_top, in_place, on_top_keys = [], [], [], []
        for summary in sorted(summaries, key=lambda s: s.last_activity or 0, reverse=True):
            row_id = dom_id(summary.session_id)
            matches = self.filters.matches(summary)
            if row_id in self.shown and (not matches or self.first_page):
                removed.append(
                    work.text(
                        ("removed", row_id),
                        lambda row_id=row_id: render_to_string(
                            PUSH + "row-removed", {"row_id": row_id}
                        ),
                    )
                )
                self.shown.discard(row_id)
            if not matches:
                continue
            if self.first_page:  # newest activity first
                on_top.append(self._row(work, summary, ""))
                on_top_keys.append(row_id)
                if len(self.shown) < MAX_SHOWN_ROWS:
                    self.shown.add(row_id)
            elif row_id in self.shown:
                in_place.append(self._row(work, summary, "true"))
        # Separate messages: an HTML parser folds a <tbody> that follows a <tr> into the
        # same table body, which would turn the prepend into a second swap of the same id.
        if removed:
            await self.send(text_data="".join(removed))
        if on_top:
            rows = "".join(on_top)
            await self.send(
                text_data=work.text(
                    ("on-top", self.can_intervene, *on_top_keys),
                    lambda: render_to_string(PUSH + "rows-on-top", {"rows": rows}),
                )
            )
        if in_place:
            await self.send(text_data="".join(in_place))

    def _row(self, work: NoticeWork, summary, oob: str) -> str:
        """A session's row as this page draws it (rows differ by ``can_intervene`` alone: they
        hold no CSRF token), rendered once per notice and variant."""
        return work.text(
            ("row", summary.session_id, oob, self.can_intervene),
            lambda: render_session_row(summary, oob=oob, can_intervene=self.can_intervene),
        )


class SessionConsumer(LoginRequiredConsumer):
    """One session's page: every event in order, once; the header and state kept current."""

    layer_message_types = frozenset({"session.events", "session.audit"})

    async def connect(self):
        try:
            self.session_id = validate_session_id(self.scope["url_route"]["kwargs"]["session_id"])
        except CoordinationError:
            await self.close(code=CLOSE_BAD_REQUEST)
            return
        self.group = session_group(self.session_id)
        self.last_sent: tuple[int, int] | None = None
        self.resumed = False
        self.buffer: list[dict] = []
        self.buffer_bytes = 0
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "transcript"):
            self.transcript.close()
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict) or "resume" not in content:
            return
        after = content.get("resume") or "0"
        try:
            validate_event_id(after, "resume")
        except InvalidCursor as exc:
            await self.send_json({"error": str(exc)})
            return
        self.last_sent = parse_event_id(after)
        items, gap = await self._replay_items()
        if gap:
            await self.send(text_data=self._gap_notice(items[0]["id"]))
        await self._send_events(items, refresh=bool(items))
        buffered, self.buffer, self.buffer_bytes, self.resumed = self.buffer, [], 0, True
        await self._send_events(buffered, refresh=False)

    async def _replay_items(self) -> tuple[list[dict], bool]:
        """The rows the page missed after ``last_sent``, oldest first, at most ``REPLAY_BYTES``
        of them: read newest first, a page at a time, so a replay costs what it sends, not
        what the session holds. True as well when older missed events were left out."""
        coord = coordinator(self.session_id)
        items: list[dict] = []
        budget, before = REPLAY_BYTES, None
        while len(items) < REPLAY_LIMIT:
            events = await coord.events(newest_first=True, limit=REPLAY_PAGE, before=before)
            for event in events:
                if self.last_sent is not None and parse_event_id(event.id) <= self.last_sent:
                    return items[::-1], False
                item = event_item(event)
                budget -= _size(item)
                if budget < 0 and items:
                    return items[::-1], True
                items.append(item)
            if len(events) < REPLAY_PAGE:
                break
            before = events[-1].id
        return items[::-1], len(items) >= REPLAY_LIMIT

    def _gap_notice(self, oldest_sent: str) -> str:
        """Placed below the replayed rows: older missed events are on the timeline page."""
        url = reverse("coordination:timeline", args=[self.session_id]) + f"?before={oldest_sent}"
        return render_to_string(PUSH + "replay-gap", {"url": url})

    async def session_events(self, message):
        if not self.resumed:
            size = sum(_size(item) for item in message["events"])
            if len(self.buffer) < BUFFER_LIMIT and self.buffer_bytes + size <= BUFFER_BYTES:
                self.buffer.extend(message["events"])
                self.buffer_bytes += size
            return  # beyond the limit the replay from Redis covers it
        await self._send_events(message["events"], refresh=True)

    async def _send_events(self, items: list[dict], *, refresh: bool) -> None:
        """Send the items (id, type, rendered row) not sent yet, newest on top, in frames of
        at most ``FRAME_BYTES`` of rows (a single larger row goes alone)."""
        fresh = []
        for item in items:
            key = parse_event_id(item["id"])
            if self.last_sent is not None and key <= self.last_sent:
                continue
            self.last_sent = key
            fresh.append(item)
        if not fresh:
            return
        frames: list[list[dict]] = [[]]
        size = 0
        for item in fresh:  # oldest first: each frame goes on top of the one before
            if frames[-1] and size + _size(item) > FRAME_BYTES:
                frames.append([])
                size = 0
            frames[-1].append(item)
            size += _size(item)
        for frame in frames:
            rows = "".join(item["html"] for item in reversed(frame))
            await self.send(text_data=render_to_string(PUSH + "timeline-frame", {"rows": rows}))
        types = {e["type"] for e in fresh}
        if refresh and (
            types & {t.value for t in SUMMARY_EVENTS} or EventType.STATE_CHANGED.value in types
        ):
            # the approvals panel only when an approval changed: a redraw would reset the
            # <details> a supervisor opened to edit arguments (the text areas are hx-preserve)
            header = await self._render_header(
                approvals=bool(types & {"approval_requested", "approval_decided"})
            )
            if header:
                await self.send(text_data=header)
        if refresh and types & TRANSCRIPT_TYPES:
            # the conversation is redrawn whole from the same partial as the page (coalesced)
            if not hasattr(self, "transcript"):
                self.transcript = LiveTranscript(
                    self.session_id,
                    lambda html: self.send(text_data=html),
                    lambda: float("inf") if self._outbox_closed else self._outbox_bytes,
                )
            self.transcript.poke()

    async def session_audit(self, message):
        """A supervisor acted on this session (from any process): redraw the audit trail."""
        context = {"oob": True, "audit": await recent_audit(self.session_id)}
        await self.send(
            text_data=render_to_string("coordination/session_detail.html#audit", context)
        )

    async def _render_header(self, *, approvals: bool = True) -> str:
        summary = await session_index().get_session(self.session_id)
        if summary is None:
            return ""
        context = {
            **await header_context(self.session_id, summary),
            "oob": True,
            "can_intervene": self.can_intervene,
            "me": f"human:{self.user.get_username()}",
            "csrf_token": self.csrf_token,
        }
        return "".join(
            render_to_string(f"coordination/session_detail.html#{part}", context)
            for part in ("summary", "actions", "state-table")
        ) + (
            render_to_string("coordination/_approvals.html#session-approvals", context)
            if approvals
            else ""
        )
