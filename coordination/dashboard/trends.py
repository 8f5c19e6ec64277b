"""Trends: events, escalations, takeovers and SLA breaches per minute (24 h) and per hour (7 d),
and how long sessions wait for a takeover and for a hand-back, drawn as SVG on /trends/.

Fed by the active relay (``coordination.realtime.relay``), the one place every feed entry passes
on the web side, exactly once per entry: ``record_entries`` runs one Lua script per batch that
counts only entries newer than a high-water mark it keeps itself (``mark``), so a batch read
again after a crash (the relay is at-least-once) is not counted twice, and a stale leader's
late batch neither.

Memory is bounded: one small hash per minute (expires 25 h after its minute) and per hour
(expires 8 days after its hour), per-agent and per-queue fields capped per hour bucket
(``LABEL_CAP``, the rest counted as "(other)"), label values cut to ``LABEL_CHARS``; the
duration samples are sorted sets trimmed to 7 days and ``SAMPLE_CAP`` members; the
per-session state (when it escalated, when it was taken over) expires after 8 days.

Every key shares the ``{trends}`` hash tag, so on a Redis Cluster the script's keys live in one
slot. Agents are untrusted: agent ids, queue names and supervisor names come from them, so they
are cleaned (no lone surrogates), cut, and escaped by the templates like any other value.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from coordination.core import SessionIndex
from coordination.core.scripts import Script
from coordination.foundation.display import clean_text, cut_chars
from coordination.supervision.sla import is_over_sla, sla_deadline, sla_seconds

MINUTES = 24 * 60  # per-minute buckets shown (24 h)
HOURS = 7 * 24  # per-hour buckets shown (7 days)
MINUTE_TTL = 25 * 3600  # a minute bucket expires this long after its minute began
HOUR_TTL = 8 * 24 * 3600
STATE_TTL = 8 * 24 * 3600  # "escalated at" / "taken over at" of one session
SAMPLE_WINDOW_MS = 7 * 24 * 3600 * 1000
SAMPLE_CAP = 5000  # duration samples kept per kind (the newest)
LABEL_CAP = 30  # distinct agents (or queues, or supervisors) per hour bucket and kind
LABEL_CHARS = 64
MAX_DATA_BYTES = 64 * 1024  # payloads larger than this are not parsed for a queue name
OTHER = "(other)"
DEFAULT_QUEUE = "(default)"

SERIES = ("events", "escalations", "takeovers", "handbacks", "sla_breaches")
SERIES_LABELS = {
    "events": "Events",
    "escalations": "Escalations",
    "takeovers": "Takeovers",
    "handbacks": "Hand-backs",
    "sla_breaches": "SLA breaches",
}
# label kinds kept in the hour buckets: kind -> (what is counted, by what)
LABEL_KINDS = {
    "agent_events": "events by agent (the event's source)",
    "queue_escalations": "escalations by queue",
    "agent_escalations": "escalations by agent (who escalated)",
    "queue_sla_breaches": "SLA breaches by queue",
    "supervisor_takeovers": "takeovers by supervisor",
}
SAMPLE_KINDS = ("takeover", "handback")

# KEYS[1]: the mark (last feed id counted). ARGV[1]: the key prefix ("<ns>:{trends}:"),
# ARGV[2]: entries as JSON, ARGV[3]: SLA breaches found by the scan as JSON, then the limits.
# An entry: [feed ms, feed seq, event ms, type, session digest, agent, queue, sla ms, supervisor,
# clears escalation (0/1)]; every number is passed as a string (cjson turns big numbers into
# floats that tostring() prints as 1.7e+12).
RECORD = Script(
    "trends_record",
    r"""
local P = ARGV[1]
local entries = cjson.decode(ARGV[2])
local breaches = cjson.decode(ARGV[3])
local MINUTE_TTL, HOUR_TTL, STATE_TTL = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local SAMPLE_WINDOW, SAMPLE_CAP, LABEL_CAP = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local OTHER = ARGV[10]
local now_s = tonumber(redis.call('TIME')[1])

local function fmt(n) return string.format('%d', n) end

local function bump(key, field, expire_at)
  if expire_at <= now_s then return end  -- older than the bucket's retention: not kept
  redis.call('HINCRBY', key, field, 1)
  redis.call('EXPIREAT', key, expire_at)
end

local function count(ms, field)
  local minute = math.floor(ms / 60000)
  local hour = math.floor(ms / 3600000)
  bump(P .. 'm:' .. fmt(minute), field, minute * 60 + MINUTE_TTL)
  bump(P .. 'h:' .. fmt(hour), field, hour * 3600 + HOUR_TTL)
end

local function label(ms, kind, name)
  local hour = math.floor(ms / 3600000)
  local expire_at = hour * 3600 + HOUR_TTL
  if expire_at <= now_s then return end
  local key = P .. 'h:' .. fmt(hour)
  local field = 'l\0' .. kind .. '\0' .. name
  if redis.call('HEXISTS', key, field) == 0 then
    if tonumber(redis.call('HGET', key, 'n\0' .. kind) or '0') >= LABEL_CAP then
      field = 'l\0' .. kind .. '\0' .. OTHER
    else
      redis.call('HINCRBY', key, 'n\0' .. kind, 1)
    end
  end
  redis.call('HINCRBY', key, field, 1)
  redis.call('EXPIREAT', key, expire_at)
end

local function sample(kind, ms, id, duration, name)
  local key = P .. 's:' .. kind
  redis.call('ZADD', key, ms, id .. '|' .. fmt(duration) .. '|' .. name)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. fmt(ms - SAMPLE_WINDOW))
  redis.call('ZREMRANGEBYRANK', key, 0, -(SAMPLE_CAP + 1))
  redis.call('PEXPIRE', key, SAMPLE_WINDOW + 86400000)
end

local function breach(digest, deadline_ms, queue)
  if redis.call('SET', P .. 'breach:' .. digest, '1', 'NX', 'EX', STATE_TTL) then
    count(deadline_ms, 'sla_breaches')
    label(deadline_ms, 'queue_sla_breaches', queue)
  end
end

local mark = redis.call('GET', KEYS[1])
local mark_ms, mark_seq = -1, -1
if mark then
  local a, b = string.match(mark, '^(%d+)-(%d+)$')
  if a then mark_ms, mark_seq = tonumber(a), tonumber(b) end
end
local counted = 0
for _, e in ipairs(entries) do
  local fms, fseq = tonumber(e[1]), tonumber(e[2])
  if fms > mark_ms or (fms == mark_ms and fseq > mark_seq) then
    mark_ms, mark_seq = fms, fseq
    counted = counted + 1
    local ms, etype, digest, agent, queue = tonumber(e[3]), e[4], e[5], e[6], e[7]
    local id = e[1] .. '-' .. e[2]
    count(ms, 'events')
    label(ms, 'agent_events', agent)
    if etype == 'escalated' then
      count(ms, 'escalations')
      label(ms, 'queue_escalations', queue)
      label(ms, 'agent_escalations', agent)
      -- the first escalation's time counts, as the core's queue keeps it
      if redis.call('SET', P .. 'esc:' .. digest, e[3] .. '|' .. e[8] .. '|' .. queue, 'NX', 'EX', STATE_TTL) then
        redis.call('DEL', P .. 'breach:' .. digest)
      end
    elseif etype == 'human_takeover' then
      count(ms, 'takeovers')
      label(ms, 'supervisor_takeovers', e[9])
      local esc = redis.call('GET', P .. 'esc:' .. digest)
      if esc then
        local esc_ms, sla_ms, esc_queue = string.match(esc, '^(%d+)|(%d+)|(.*)$')
        if esc_ms then
          local waited = ms - tonumber(esc_ms)
          if waited >= 0 then sample('takeover', ms, id, waited, esc_queue) end
          if waited > tonumber(sla_ms) then
            breach(digest, tonumber(esc_ms) + tonumber(sla_ms), esc_queue)
          end
        end
        redis.call('DEL', P .. 'esc:' .. digest)
      end
      redis.call('SET', P .. 'take:' .. digest, e[3] .. '|' .. e[9], 'EX', STATE_TTL)
    elseif etype == 'human_handback' then
      count(ms, 'handbacks')
      local taken = redis.call('GET', P .. 'take:' .. digest)
      if taken then
        local taken_ms, by = string.match(taken, '^(%d+)|(.*)$')
        if taken_ms and ms >= tonumber(taken_ms) then
          sample('handback', ms, id, ms - tonumber(taken_ms), by)
        end
        redis.call('DEL', P .. 'take:' .. digest)
      end
    elseif etype == 'session_closed' then
      redis.call('DEL', P .. 'esc:' .. digest, P .. 'take:' .. digest)
    end
    if e[10] == '1' then redis.call('DEL', P .. 'esc:' .. digest) end
  end
end
if counted > 0 then
  redis.call('SET', KEYS[1], fmt(mark_ms) .. '-' .. fmt(mark_seq))
end
for _, b in ipairs(breaches) do breach(b[1], tonumber(b[2]), b[3]) end
return counted
""",
)


def key_prefix(namespace: str) -> str:
    return f"{namespace}:{{trends}}:"


def mark_key(namespace: str) -> str:
    return key_prefix(namespace) + "mark"


def session_digest(session_id: str) -> str:
    """Per-session state is keyed by a digest: ids may be long and hold any character."""
    return hashlib.sha1(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def label_text(value: object, default: str = "") -> str:
    """An agent-written name as a bounded label: text only, no lone surrogates, no NUL (the
    field separator), at most ``LABEL_CHARS`` characters."""
    if not isinstance(value, str) or not value:
        return default
    return cut_chars(clean_text(value).replace("\0", "\ufffd"), LABEL_CHARS)


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None


def _stream_id(value: object) -> tuple[int, int] | None:
    text = _text(value)
    if not text or len(text) > 41:
        return None
    ms, _, seq = text.partition("-")
    if not (ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        return None
    return int(ms), int(seq)


def _data(fields: dict[str, Any]) -> dict[str, Any]:
    raw = fields.get("d")
    if not isinstance(raw, (bytes, str)) or len(raw) > MAX_DATA_BYTES:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def entry_row(feed_id: str, fields: dict[Any, Any]) -> list[str] | None:
    """A raw feed entry as the script's row, or None when it names no session or event."""
    fields = {(_text(k) or ""): v for k, v in fields.items()}
    feed = _stream_id(feed_id)
    event = _stream_id(fields.get("e"))
    session_id = _text(fields.get("s"))
    if feed is None or event is None or not session_id:
        return None
    etype = _text(fields.get("t")) or ""
    agent = label_text(_text(fields.get("src")), "(none)")
    queue = supervisor = ""
    clears = "0"
    if etype in ("escalated", "human_takeover", "handoff_reassigned", "handoff_claimed"):
        data = _data(fields)
        if etype == "escalated":
            queue = label_text(data.get("queue"), DEFAULT_QUEUE)
        elif etype == "human_takeover":
            supervisor = label_text(data.get("supervisor"), "(unknown)")
        elif etype == "handoff_reassigned":
            # the escalation ends here unless it waits for the new agent's first renew
            clears = "0" if data.get("escalation_kept") else "1"
        elif data.get("reassigned"):  # that first renew
            clears = "1"
    # the SLA of the queue asked for, fixed when the escalation is counted
    sla_ms = int(sla_seconds(None if queue == DEFAULT_QUEUE else queue) * 1000) if queue else 0
    return [
        str(feed[0]),
        str(feed[1]),
        str(event[0]),
        label_text(etype, "(none)"),
        session_digest(session_id),
        agent,
        queue,
        str(max(0, sla_ms)),
        supervisor,
        clears,
    ]


async def record_entries(
    index: SessionIndex,
    entries: list[tuple[str, dict]],
    breaches: list[list[str]] | None = None,
) -> int:
    """Counts a batch of raw feed entries (and SLA breaches found by ``overdue_escalations``);
    returns how many entries were new. Entries at or before the mark are skipped."""
    rows = [row for feed_id, fields in entries if (row := entry_row(feed_id, fields))]
    if not rows and not breaches:
        return 0
    ns = index.namespace
    return int(
        await index.call(
            RECORD(
                index.redis,
                [mark_key(ns)],
                [
                    key_prefix(ns),
                    json.dumps(rows, ensure_ascii=False),
                    json.dumps(breaches or [], ensure_ascii=False),
                    MINUTE_TTL,
                    HOUR_TTL,
                    STATE_TTL,
                    SAMPLE_WINDOW_MS,
                    SAMPLE_CAP,
                    LABEL_CAP,
                    OTHER,
                ],
            )
        )
    )


async def overdue_escalations(index: SessionIndex, limit: int = 200) -> list[list[str]]:
    """Escalations still waiting past their SLA (the oldest ``limit``), as breach rows: a breach
    is counted when it happens, not only when someone finally takes the session over."""
    now = time.time()
    rows = []
    for summary in await index.escalation_queue(limit=limit):
        deadline = sla_deadline(summary)
        if deadline is not None and is_over_sla(summary, now):
            queue = label_text(summary.escalation_queue, DEFAULT_QUEUE)
            rows.append([session_digest(summary.session_id), str(int(deadline * 1000)), queue])
    return rows


async def scan_breaches(index: SessionIndex) -> None:
    """For the relay's housekeeping: count the SLA breaches of sessions still escalated."""
    breaches = await overdue_escalations(index)
    if breaches:
        await record_entries(index, [], breaches)


# -- reading and drawing --


@dataclass(frozen=True)
class Bucket:
    start: float  # seconds since the epoch
    counts: dict[str, int]


def _int(value: object) -> int:
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return 0
    return max(0, min(number, 10**15))


async def read_buckets(index: SessionIndex, per: str, now: float | None = None) -> list[Bucket]:
    """The last ``MINUTES`` minute buckets (``per="minute"``) or ``HOURS`` hour buckets, oldest
    first, the current one last."""
    now = time.time() if now is None else now
    step, n, tag = (60, MINUTES, "m") if per == "minute" else (3600, HOURS, "h")
    current = int(now // step)
    numbers = list(range(current - n + 1, current + 1))
    prefix = key_prefix(index.namespace)
    async with index.redis.pipeline(transaction=False) as pipe:
        for number in numbers:
            pipe.hmget(f"{prefix}{tag}:{number}", *SERIES)
        replies = await index.call(pipe.execute())
    return [
        Bucket(number * step, {s: _int(v) for s, v in zip(SERIES, reply or [], strict=False)})
        for number, reply in zip(numbers, replies, strict=True)
    ]


async def read_labels(index: SessionIndex, hours: int, now: float | None = None) -> dict:
    """Per-label totals over the last ``hours`` hours: ``{kind: [(label, count), ...]}``,
    largest first."""
    now = time.time() if now is None else now
    current = int(now // 3600)
    prefix = key_prefix(index.namespace)
    async with index.redis.pipeline(transaction=False) as pipe:
        for number in range(current - hours + 1, current + 1):
            pipe.hgetall(f"{prefix}h:{number}")
        replies = await index.call(pipe.execute())
    totals: dict[str, dict[str, int]] = {kind: {} for kind in LABEL_KINDS}
    for reply in replies:
        for field, value in (reply or {}).items():
            field = _text(field) or ""
            if not field.startswith("l\0"):
                continue
            _, kind, name = (field.split("\0", 2) + ["", ""])[:3]
            if kind in totals:
                name = label_text(name, "(none)")
                totals[kind][name] = totals[kind].get(name, 0) + _int(value)
    return {
        kind: sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        for kind, counts in totals.items()
    }


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when there are none)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class Percentiles:
    label: str
    count: int
    p50: float | None
    p90: float | None
    p99: float | None

    @property
    def texts(self) -> tuple[str, str, str]:
        return seconds_text(self.p50), seconds_text(self.p90), seconds_text(self.p99)


def _percentiles(label: str, values: list[float]) -> Percentiles:
    values = sorted(values)
    return Percentiles(
        label, len(values), percentile(values, 50), percentile(values, 90), percentile(values, 99)
    )


async def read_durations(
    index: SessionIndex, kind: str, since: float, top: int = 10
) -> tuple[Percentiles, list[Percentiles]]:
    """Percentiles of a duration kind (``takeover``: escalation to takeover, by queue;
    ``handback``: takeover to hand-back, by supervisor) since ``since``: overall and for the
    ``top`` labels with most samples."""
    key = key_prefix(index.namespace) + f"s:{kind}"
    members = await index.call(index.redis.zrangebyscore(key, int(since * 1000), "+inf"))
    overall: list[float] = []
    by_label: dict[str, list[float]] = {}
    for member in members:
        parts = (_text(member) or "").split("|", 2)
        if len(parts) != 3:
            continue
        seconds = _int(parts[1]) / 1000.0
        overall.append(seconds)
        by_label.setdefault(label_text(parts[2], "(none)"), []).append(seconds)
    ranked = sorted(by_label.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top]
    return _percentiles("all", overall), [_percentiles(k, v) for k, v in ranked]


# -- SVG geometry (numbers only: every text goes through the template's autoescape) --

CHART_WIDTH = 720
CHART_HEIGHT = 120
HBAR_WIDTH = 420  # the bar part of a per-label row (the label's text is left of it)


def _nice_max(value: int) -> int:
    if value <= 0:
        return 1
    magnitude = 10 ** int(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def bar_chart(values: list[int]) -> dict[str, Any]:
    """Bars in a ``CHART_WIDTH`` x ``CHART_HEIGHT`` box: ``{"bars": [...], "max": n}``."""
    top = _nice_max(max(values, default=0))
    width = CHART_WIDTH / max(1, len(values))
    bars = []
    for i, value in enumerate(values):
        height = round(CHART_HEIGHT * value / top, 2)
        bars.append(
            {
                "x": round(i * width, 2),
                "y": round(CHART_HEIGHT - height, 2),
                "width": round(max(width - 1, 0.5), 2),
                "height": height,
                "value": value,
            }
        )
    return {"bars": bars, "max": top}


def sparkline(values: list[int]) -> dict[str, Any]:
    """An area path for many points (the per-minute series): ``{"path": d, "max": n}``."""
    top = _nice_max(max(values, default=0))
    step = CHART_WIDTH / max(1, len(values) - 1)
    points = " ".join(
        f"L{round(i * step, 1)},{round(CHART_HEIGHT - CHART_HEIGHT * v / top, 1)}"
        for i, v in enumerate(values)
    )
    return {"path": f"M0,{CHART_HEIGHT} {points} L{CHART_WIDTH},{CHART_HEIGHT} Z", "max": top}


def hbars(rows: list[tuple[str, int]], top: int = 10) -> list[dict[str, Any]]:
    """Horizontal bars for per-label totals (percent widths of the largest)."""
    rows = rows[:top]
    largest = max((count for _, count in rows), default=0) or 1
    return [
        {
            "label": label,
            "count": count,
            "y": 20 * i,
            "width": round(HBAR_WIDTH * count / largest, 1),
        }
        for i, (label, count) in enumerate(rows)
    ]


async def trends_context(index: SessionIndex, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    minutes = await read_buckets(index, "minute", now)
    hours = await read_buckets(index, "hour", now)
    labels_day = await read_labels(index, 24, now)
    labels_week = await read_labels(index, HOURS, now)
    charts = []
    for series in SERIES:
        minute_values = [b.counts[series] for b in minutes]
        hour_values = [b.counts[series] for b in hours]
        charts.append(
            {
                "key": series,
                "label": SERIES_LABELS[series],
                "day_total": sum(minute_values),
                "week_total": sum(hour_values),
                "minute": sparkline(minute_values),
                "hour": bar_chart(hour_values),
            }
        )
    durations = []
    for kind, what, by in (
        ("takeover", "Time to takeover (escalation to takeover)", "queue"),
        ("handback", "Time to hand back (takeover to hand-back)", "supervisor"),
    ):
        day, day_by = await read_durations(index, kind, now - 24 * 3600)
        week, week_by = await read_durations(index, kind, now - HOURS * 3600)
        durations.append(
            {
                "kind": kind,
                "label": what,
                "by": by,
                "day": day,
                "day_by": day_by,
                "week": week,
                "week_by": week_by,
            }
        )
    by_label = []
    for kind, text in LABEL_KINDS.items():
        day_counts = dict(labels_day[kind])
        week = hbars(labels_week[kind])
        for row in week:
            row["day_count"] = day_counts.get(row["label"], 0)
        by_label.append(
            {"kind": kind, "label": text, "week": week, "height": 20 * max(1, len(week))}
        )
    active_minutes = [
        {"start": _utc(b.start, "%Y-%m-%d %H:%M"), "counts": [b.counts[s] for s in SERIES]}
        for b in minutes
        if any(b.counts.values())
    ]
    return {
        "charts": charts,
        "durations": durations,
        "by_label": by_label,
        "series_labels": [SERIES_LABELS[s] for s in SERIES],
        "hour_rows": [
            {"start": _utc(b.start, "%Y-%m-%d %H:00"), "counts": [b.counts[s] for s in SERIES]}
            for b in hours
        ],
        "minute_rows": active_minutes,
        "minute_start": minutes[0].start,
        "hour_start": hours[0].start,
        "now": now,
        "chart_width": CHART_WIDTH,
        "chart_height": CHART_HEIGHT,
        "label_cap": LABEL_CAP,
        "label_chars": LABEL_CHARS,
    }


def _utc(timestamp: float, pattern: str) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime(pattern)


def seconds_text(seconds: float | None) -> str:
    """A duration for the percentile tables: "850 ms", "45 s", "5 min 3 s", "2 h 5 min"."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{round(seconds)} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
