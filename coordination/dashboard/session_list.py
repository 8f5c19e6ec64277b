"""The sessions list beyond what the core's index pages by itself: sorting by a whitelisted
column, the "mine", "unassigned" and "waiting for pickup" views, and search inside event text.

Costs are bounded and said on the page: the plain list (newest activity first, by status, owner
or id prefix) is the core's O(log N + page) ``list_sessions``. Anything else walks an index in
the chosen order a batch at a time and filters here, examining at most ``SCAN_LIMIT`` sessions
per page (``SEARCH_SCAN_LIMIT`` when searching event text, which reads the last
``SEARCH_EVENTS`` events of each examined session, at most ``SEARCH_EVENT_BYTES`` of each
event's payload, cut on the server); a page that stops at that limit says so and links on from
where the walk stopped.

Every parameter is untrusted: a sort key or view outside the whitelist, a cursor this module did
not issue or a search longer than ``MAX_SEARCH_CHARS`` is a 400 with a message (``BadQuery``);
the search is a plain case-insensitive substring test (never a pattern).
"""

from __future__ import annotations

import asyncio
import json
import math
import unicodedata
from dataclasses import dataclass
from typing import Any

from redis.client import NEVER_DECODE
from redis.exceptions import NoScriptError

from coordination.core import InvalidCursor, SessionIndex, SessionSummary
from coordination.core.keys import validate_agent_id
from coordination.core.scripts import Script

SORTS = {
    "-activity": "last activity, newest first",
    "activity": "last activity, oldest first",
    "session": "session id, A to Z",
    "-session": "session id, Z to A",
    "status": "status (escalated, waiting, human, active, closed), newest first within each",
    "-status": "status (closed, active, human, waiting, escalated), oldest first within each",
}
DEFAULT_SORT = "-activity"
STATUS_ORDER = ("escalated", "waiting", "human", "active", "closed")
VIEWS = {
    "mine": "Mine",
    "unassigned": "Unassigned",
    "pickup": "Waiting for pickup",
}
MAX_SEARCH_CHARS = 200
SEARCH_EVENTS = 50  # the last this many events of a session are searched
SEARCH_EVENT_BYTES = 16 * 1024  # of each event's payload
SCAN_LIMIT = 1000  # sessions examined per page when the list is filtered here
SEARCH_SCAN_LIMIT = 200  # ... when event text is searched as well
BATCH = 50
OWNER_SESSIONS = 1000  # the core's own bound when listing an owner's sessions

# The last ARGV[1] events of one session, type and payload cut to ARGV[2] bytes on the server,
# so a search never moves megabytes of payload.
LAST_EVENTS_TEXT = Script(
    "session_list_search",
    r"""
local rows = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', tonumber(ARGV[1]))
local limit = tonumber(ARGV[2])
local out = {}
for _, row in ipairs(rows) do
  local fields, t, d = row[2], '', ''
  for i = 1, #fields, 2 do
    if fields[i] == 't' then t = fields[i + 1] elseif fields[i] == 'd' then d = fields[i + 1] end
  end
  out[#out + 1] = string.sub(t, 1, 256) .. '\n' .. string.sub(d, 1, limit)
end
return out
""",
)


class BadQuery(ValueError):
    """A sessions-list parameter outside what the list accepts (answered with a 400)."""


def check_query(query: Any) -> None:
    """Raise ``BadQuery`` naming the first parameter the list does not accept."""
    sort = query.get("sort")
    if sort not in (None, "") and sort not in SORTS:
        raise BadQuery(f"unknown sort; valid: {', '.join(SORTS)}")
    view = query.get("show")
    if view not in (None, "") and view not in VIEWS:
        raise BadQuery(f"unknown view (show=); valid: {', '.join(VIEWS)}")
    text = query.get("text") or ""
    if len(text) > MAX_SEARCH_CHARS:
        raise BadQuery(f"the search is {len(text):,} characters; at most {MAX_SEARCH_CHARS}")


def search_text(value: str | None) -> str | None:
    """The search as compared: NFC, lone surrogates and control characters dropped, casefolded."""
    if not value:
        return None
    value = value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become '?'
    value = "".join(c for c in value if unicodedata.category(c) not in ("Cc", "Cs"))
    value = unicodedata.normalize("NFC", value.strip())[:MAX_SEARCH_CHARS]
    return value or None


@dataclass(frozen=True)
class ListPage:
    sessions: list[SessionSummary]
    next_cursor: str | None
    scanned: int = 0  # sessions examined here (0: the core paged the list itself)
    stopped_at_limit: bool = False  # the walk stopped at its limit before the page was full
    scan_limit: int = 0


def uses_core(filters: Any) -> bool:
    """Whether the core's ``list_sessions`` pages this list by itself (no scan here)."""
    return (
        filters.effective_sort == DEFAULT_SORT
        and filters.view in (None, "mine")
        and not (filters.text)
    )


def _encode(sort: str, position: list) -> str:
    return json.dumps([sort, *position], separators=(",", ":"), ensure_ascii=False)


def _decode(cursor: str, sort: str) -> list:
    try:
        value = json.loads(cursor)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, list) or not value or value[0] != sort:
        raise InvalidCursor(f"cursor {cursor[:60]!r} is not one this list issued for this order")
    return value[1:]


def _score(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidCursor("the cursor's score is not a finite number")
    return float(value)


class _ScoreSource:
    """Members of one or more sorted sets (by activity score), one set after the other."""

    def __init__(self, index: SessionIndex, keys: list[str], desc: bool) -> None:
        self.index, self.keys, self.desc = index, keys, desc

    def start(self, position: list | None) -> tuple[int, float | None, str | None]:
        if position is None:
            return 0, None, None
        if (
            len(position) != 3
            or not isinstance(position[0], int)
            or not isinstance(position[2], str)
        ):
            raise InvalidCursor("the cursor does not fit this order")
        if not 0 <= position[0] < len(self.keys):
            raise InvalidCursor("the cursor does not fit this order")
        return position[0], _score(position[1]), position[2]

    async def batch(self, pos: tuple[int, float | None, str | None], n: int):
        """Up to ``n`` members after ``pos``, each with the position it leaves; [] at the end."""
        set_index, score, member = pos
        while set_index < len(self.keys):
            key = self.keys[set_index]
            rows = await self._after(key, score, member, n)
            if rows:
                return [(m, (set_index, s, m)) for m, s in rows]
            set_index, score, member = set_index + 1, None, None
        return []

    async def _after(self, key: str, score: float | None, member: str | None, n: int):
        redis, call = self.index.redis, self.index.call
        if score is None:
            start, end = ("+inf", "-inf") if self.desc else ("-inf", "+inf")
        else:
            start, end = (score, "-inf") if self.desc else (score, "+inf")
        rows: list[tuple[str, float]] = []
        offset = 0
        # members sharing the cursor's score were partly shown: skip those, a batch at a time
        while len(rows) < n:
            batch = await call(
                redis.zrange(
                    key,
                    start,
                    end,
                    desc=self.desc,
                    byscore=True,
                    offset=offset,
                    num=n,
                    withscores=True,
                )
            )
            if not batch:
                break
            offset += len(batch)
            for m, s in batch:
                if score is None or s != score:
                    rows.append((m, s))
                elif (m < member) if self.desc else (m > member):
                    rows.append((m, s))
        return rows[:n]


class _LexSource:
    """Session ids by name, optionally those starting with ``prefix``."""

    def __init__(self, index: SessionIndex, desc: bool, prefix: str | None) -> None:
        self.index, self.desc, self.prefix = index, desc, prefix

    def start(self, position: list | None) -> str | None:
        if position is None:
            return None
        if len(position) != 1 or not isinstance(position[0], str):
            raise InvalidCursor("the cursor does not fit this order")
        return position[0]

    async def batch(self, pos: str | None, n: int):
        low = f"[{self.prefix}" if self.prefix else "-"
        high = f"[{self.prefix}\U0010ffff" if self.prefix else "+"
        names = self.index.keys.names
        if self.desc:
            top = f"({pos}" if pos is not None else high
            members = await self.index.call(
                self.index.redis.zrevrangebylex(names, top, low, start=0, num=n)
            )
        else:
            bottom = f"({pos}" if pos is not None else low
            members = await self.index.call(
                self.index.redis.zrangebylex(names, bottom, high, start=0, num=n)
            )
        return [(m, m) for m in members]


class _ListSource:
    """An owner's sessions (few: the core lists at most ``OWNER_SESSIONS``), sorted here."""

    def __init__(self, summaries: list[SessionSummary]) -> None:
        self.summaries = summaries

    def start(self, position: list | None) -> int:
        if position is None:
            return 0
        if len(position) != 1 or isinstance(position[0], bool) or not isinstance(position[0], int):
            raise InvalidCursor("the cursor does not fit this order")
        return max(0, position[0])

    async def batch(self, pos: int, n: int):
        return [(s, pos + i + 1) for i, s in enumerate(self.summaries[pos : pos + n])]


def _sort_key(sort: str):
    name = sort.lstrip("-")
    if name == "session":
        return lambda s: s.session_id
    if name == "status":
        return lambda s: (
            STATUS_ORDER.index(s.status) if s.status in STATUS_ORDER else len(STATUS_ORDER),
            -(s.last_activity or 0),
            s.session_id,
        )
    return lambda s: (s.last_activity or 0, s.session_id)


async def _owner_summaries(index: SessionIndex, owner: str, sort: str) -> list[SessionSummary]:
    validate_agent_id(owner, "owner")
    members = await index.call(
        index.redis.zrangebylex(
            index.keys.owners, f"[{owner}\0", f"({owner}\x01", start=0, num=OWNER_SESSIONS
        )
    )
    rows = await index.get_sessions([m.split("\0", 1)[1] for m in members])
    # "-status" is "status" reversed item by item, as the other "-" orders are
    return sorted(rows, key=_sort_key(sort), reverse=sort.startswith("-"))


async def _source(index: SessionIndex, filters: Any):
    sort = filters.effective_sort
    desc = sort.startswith("-")
    if filters.owner:
        return _ListSource(await _owner_summaries(index, filters.owner, sort))
    status = filters.effective_status
    if sort in ("session", "-session"):
        return _LexSource(index, desc, filters.prefix)
    if sort in ("status", "-status"):
        order = [status] if status else list(STATUS_ORDER)
        if sort == "-status":
            order.reverse()
        # "status": newest first within each status; "-status" reverses all of it
        return _ScoreSource(index, [index.keys.status[s] for s in order], sort == "status")
    key = index.keys.status[status] if status else index.keys.activity
    return _ScoreSource(index, [key], desc)


async def _last_events_text(index: SessionIndex, session_id: str) -> list[bytes]:
    key = index.keys.session(session_id).events
    args = [SEARCH_EVENTS, SEARCH_EVENT_BYTES]
    redis = index.redis
    try:
        return await index.call(
            redis.execute_command(
                "EVALSHA", LAST_EVENTS_TEXT.sha, 1, key, *args, **{NEVER_DECODE: True}
            )
        )
    except NoScriptError:
        return await index.call(
            redis.execute_command(
                "EVAL", LAST_EVENTS_TEXT.source, 1, key, *args, **{NEVER_DECODE: True}
            )
        )


def _event_text(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    kind, _, data = text.partition("\n")
    try:
        # "\u00e9" in the stored JSON is found by searching for "é"
        data = json.dumps(json.loads(data), ensure_ascii=False)
    except (ValueError, RecursionError):
        pass  # cut, or not JSON: searched as stored
    return unicodedata.normalize("NFC", f"{kind} {data}").casefold()


async def _mentions(index: SessionIndex, summaries: list[SessionSummary], needle: str):
    needle = needle.casefold()
    texts = await asyncio.gather(*(_last_events_text(index, s.session_id) for s in summaries))
    return [
        s
        for s, events in zip(summaries, texts, strict=True)
        if any(needle in _event_text(raw) for raw in events or [])
    ]


async def list_page(index: SessionIndex, filters: Any, limit: int, me: str | None) -> ListPage:
    """One page of the list for ``filters`` (a ``SessionFilters``)."""
    if uses_core(filters):
        page = await index.list_sessions(
            status=filters.effective_status,
            cursor=filters.cursor,
            limit=limit,
            owner=filters.owner,
            prefix=filters.prefix,
        )
        return ListPage(page.sessions, page.next_cursor)
    sort = filters.effective_sort
    if filters.effective_status is False:  # e.g. "waiting for pickup" and status=closed
        return ListPage([], None)
    source = await _source(index, filters)
    position = source.start(_decode(filters.cursor, sort) if filters.cursor else None)
    scan_limit = SEARCH_SCAN_LIMIT if filters.text else SCAN_LIMIT
    needle = search_text(filters.text)
    rows: list[tuple[SessionSummary, Any]] = []
    scanned = 0
    exhausted = False
    last_position = position
    while len(rows) <= limit and scanned < scan_limit:
        batch = await source.batch(last_position, min(BATCH, scan_limit - scanned))
        if not batch:
            exhausted = True
            break
        scanned += len(batch)
        last_position = batch[-1][1]
        if isinstance(source, _ListSource):
            found = [(s, p) for s, p in batch]
        else:
            summaries = {s.session_id: s for s in await index.get_sessions([m for m, _ in batch])}
            found = [(summaries[m], p) for m, p in batch if m in summaries]
        found = [(s, p) for s, p in found if filters.matches(s)]
        if needle and found:
            kept = {s.session_id for s in await _mentions(index, [s for s, _ in found], needle)}
            found = [(s, p) for s, p in found if s.session_id in kept]
        rows.extend(found)
    page = rows[:limit]

    def cursor_at(position: Any) -> str:
        flat = list(position) if isinstance(position, tuple) else [position]
        return _encode(sort, flat)

    if len(rows) > limit:
        return ListPage([s for s, _ in page], cursor_at(page[-1][1]), scanned, False, scan_limit)
    if not exhausted and scanned >= scan_limit:
        # stopped at the limit with the page not full: the next page walks on from here
        return ListPage([s for s, _ in page], cursor_at(last_position), scanned, True, scan_limit)
    return ListPage([s for s, _ in page], None, scanned, False, scan_limit)


# -- links (each an href, used by hx-get as well) --

COLUMNS = (
    ("session", "Session", "session"),
    ("status", "Status", "status"),
    ("activity", "Last activity", "-activity"),
)


def column_links(filters: Any) -> list[dict[str, Any]]:
    """Sortable column headers: the query that sorts by each (the current one flips), and its
    ``aria-sort``."""
    current = filters.effective_sort
    links = []
    for name, label, first in COLUMNS:
        if current.lstrip("-") == name:
            target = current[1:] if current.startswith("-") else f"-{current}"
            aria = "descending" if current.startswith("-") else "ascending"
            if name == "status":  # "status" lists escalated first: read as ascending
                aria = "ascending" if current == "status" else "descending"
        else:
            target, aria = first, None
        links.append(
            {
                "name": name,
                "label": label,
                "query": filters.query_string(cursor=None, sort=target),
                "aria_sort": aria,
            }
        )
    return links


SORT_CHOICES = (
    ("-activity", "Newest activity"),
    ("activity", "Oldest activity"),
    ("session", "Session A–Z"),
    ("-session", "Session Z–A"),
    ("status", "Status"),
)


def sort_options(filters: Any) -> list[dict[str, Any]]:
    """The orders as a list of links, for narrow screens where the table's header is hidden."""
    current = filters.effective_sort
    return [
        {
            "label": label,
            "query": filters.query_string(cursor=None, sort=key),
            "current": key == current,
        }
        for key, label in SORT_CHOICES
    ]


def view_links(filters: Any) -> list[dict[str, Any]]:
    """All / Mine / Unassigned / Waiting for pickup: the current filters in another view
    (the owner filter is dropped where the view sets or excludes it)."""
    links = []
    for view, label in (("", "All"), *VIEWS.items()):
        owner = None if view in ("mine", "unassigned") or filters.view == "mine" else filters.owner
        query = filters.query_string(cursor=None, show=view or None, agent=owner)
        links.append(
            {"view": view, "label": label, "query": query, "current": (filters.view or "") == view}
        )
    return links
