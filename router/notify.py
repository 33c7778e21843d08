"""`leadrouter notify`: a reference notifier that posts assignments and SLA alerts to a
Slack-compatible incoming webhook.

It reads `<prefix>leads.assignments` and `<prefix>leads.sla` (and, for the handover summary,
the `lead.sql` events of `<prefix>leads.transitions`) in its own consumer group and posts one
`{"text": ..., "blocks": [...]}` message per event. Two halves:

- pure functions (`format_message`, `handover_summary`, `classify_status`, `backoff_delay`,
  `parse_retry_after`, `retry_delay`), unit-tested without a broker or a network;
- the I/O loop (`Notifier`), which gives these guarantees:
  * an offset is committed only once the message it covers is done with: posted (2xx),
    refused for good (4xx other than 408/429), given up after `--max-retries`, or skipped
    (duplicate, `sla.met`, unknown type, undecodable). A crash re-posts at most the one
    message whose post was in flight (at-least-once);
  * connection errors, timeouts, 408, 429 and 5xx are retried with exponential backoff and
    jitter (capped, default 30 s), waiting at least the `Retry-After` the server asked for;
    `--max-retries 0` (the default) retries forever, so a webhook outage blocks the stream
    instead of dropping notifications;
  * repeated `event_id`s are dropped (an in-memory LRU of the last 100k ids);
  * lead emails and names never leave the process in full (masked with `router.logs`), and
    the webhook URL, which is a secret, is never logged beyond its host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import logging.config
import os
import random
import signal
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import orjson

from router.logs import logging_config, mask_email, mask_name
from router.settings import Settings, bootstrap_servers, from_env

if TYPE_CHECKING:  # aiohttp and aiokafka are imported where used: `leadrouter --help` stays fast
    import aiohttp

log = logging.getLogger("router.notify")

WEBHOOK_ENV = "LEADROUTER_NOTIFY_WEBHOOK_URL"

# What gets posted; `sla.met` is deliberately skipped (the rep did the job: no alert needed).
ASSIGNMENT_TYPES = frozenset({"lead.assigned", "lead.reassigned", "lead.queued"})
SLA_ALERT_TYPES = frozenset({"sla.warning", "sla.breached"})
POSTED_TYPES = ASSIGNMENT_TYPES | SLA_ALERT_TYPES
SKIPPED_TYPES = frozenset({"sla.met"})

MAX_TRACE_ENTRIES = 8
MAX_TALKING_POINTS = 5
RETRY_AFTER_CAP_SECONDS = 600.0
MAX_POLL_INTERVAL_MS = 24 * 3600 * 1000


# --------------------------------------------------------------------------------------------
# Formatting (pure)
# --------------------------------------------------------------------------------------------


def _str(value: Any) -> str | None:
    """A non-empty string field, or None for anything else (the input is untrusted JSON)."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _esc(text: str) -> str:
    """Escape Slack mrkdwn control characters: `<!channel>` or `<http://x|y>` in a company
    name must render as text, not ping a channel or hide a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed


def _when_text(value: Any) -> str:
    """Plain-text time (UTC) for the `text` fallback."""
    parsed = _parse_time(value)
    if parsed is None:
        return _str(value) or "?"
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _when_mrkdwn(value: Any) -> str:
    """Slack date token: every reader sees the time in their own time zone; other clients show
    the UTC fallback after the `|`."""
    parsed = _parse_time(value)
    if parsed is None:
        return _esc(_str(value) or "?")
    return (f"<!date^{int(parsed.timestamp())}^{{date_short_pretty}} {{time_secs}}"
            f"|{_when_text(value)}>")


def handover_summary(transition: dict[str, Any]) -> dict[str, Any] | None:
    """The part of a `lead.sql` handover packet a rep needs in a chat message, already masked.

    Returns None for anything that is not a `lead.sql` with a handover. The summary is what the
    notifier keeps in memory (bounded) until the lead's assignment arrives: never the full email
    or name of the lead."""
    if not isinstance(transition, dict) or transition.get("type") != "lead.sql":
        return None
    h = transition.get("handover")
    if not isinstance(h, dict):
        return None
    profile = _dict(h.get("profile"))
    company = _dict(profile.get("company"))
    points = _list(h.get("talking_points"))
    signals = _list(h.get("intent_signals"))
    intent = [t for t in (_str(s.get("type")) for s in signals if isinstance(s, dict)) if t]
    score = h.get("score", transition.get("score"))
    return {
        "lead_id": _str(transition.get("lead_id")),
        "cycle": transition.get("cycle"),
        "path": _str(transition.get("path")),
        "score": score if isinstance(score, int) and not isinstance(score, bool) else None,
        "sla_class": _str(h.get("sla_class")),
        "name": mask_name(_str(profile.get("name"))),
        "email": mask_email(_str(profile.get("email"))),
        "title": _str(profile.get("title")),
        "seniority": _str(profile.get("seniority")),
        "buying_role": _str(profile.get("buying_role")),
        "country": _str(profile.get("country")),
        "language": _str(profile.get("language")),
        "company": _str(company.get("name")),
        "industry": _str(company.get("industry")),
        "employees": _str(company.get("employees")),
        "talking_points": [p for p in (_str(x) for x in points) if p][:MAX_TALKING_POINTS],
        "intent_signals": list(dict.fromkeys(intent))[-3:],
    }


def _who(h: dict[str, Any]) -> str | None:
    """`A. R., Director of Marketing @ Acme (saas, 420 employees, ES)` from a summary."""
    person = ", ".join(p for p in (h.get("name"), h.get("title")) if p)
    org_bits = [b for b in (h.get("industry"),
                            f"{h['employees']} employees" if h.get("employees") else None,
                            h.get("country")) if b]
    org = h.get("company") or ""
    if org_bits:
        org = f"{org} ({', '.join(org_bits)})".strip()
    if person and org:
        return f"{person} @ {org}"
    return person or org or None


def _trace_lines(trace: Any) -> list[str]:
    """One short line per routing step; every `chosen` step is kept, the skips are cut after
    MAX_TRACE_ENTRIES (with a count of the rest)."""
    lines: list[tuple[bool, str]] = []
    for entry in _list(trace):
        if not isinstance(entry, dict):
            continue
        rep = _str(entry.get("rep_id"))
        detail = _str(entry.get("detail"))
        chosen = _str(entry.get("chosen"))
        skipped = _str(entry.get("skipped"))
        if chosen:
            line = f"{rep or '?'} chosen ({chosen})"
        elif skipped:
            line = f"{rep or '?'} skipped: {skipped}"
        else:
            line = rep or ""
        if detail:
            line = f"{line} ({detail})" if line else detail
        if line:
            lines.append((bool(chosen), _clip(line, 160)))
    out: list[str] = []
    dropped = 0
    for chosen_line, line in lines:
        if chosen_line or len(out) < MAX_TRACE_ENTRIES:
            out.append(line)
        else:
            dropped += 1
    if dropped:
        out.append(f"+{dropped} more")
    return out


def _field(label: str, value: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": _clip(f"*{label}*\n{value}", 2000)}


def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": _clip(text, 150),
                                       "emoji": True}}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, 3000)}}


def _context(*texts: str) -> dict[str, Any]:
    return {"type": "context",
            "elements": [{"type": "mrkdwn", "text": _clip(t, 2000)} for t in texts if t][:10]}


def _assignment_message(event: dict[str, Any], handover: dict[str, Any] | None
                        ) -> dict[str, Any]:
    kind = event.get("type")
    lead = _str(event.get("lead_id")) or "?"
    rep = _str(event.get("rep_id"))
    pool = _str(event.get("pool")) or "?"
    rule = _str(event.get("rule"))
    cycle = _str(event.get("cycle"))
    sla = _dict(event.get("sla"))
    sla_class = _str(sla.get("class")) or "?"
    due = sla.get("due_at")
    trace = _trace_lines(event.get("trace"))

    if kind == "lead.queued":
        title = f"Lead {lead} queued in pool {pool}: no eligible rep"
        text = (f"{title}. The SLA clock is running: first touch due by {_when_text(due)}"
                f" ({sla_class}).")
    else:
        verb = "SQL reassigned to" if kind == "lead.reassigned" else "New SQL for"
        title = f"{verb} rep {rep or '?'}"
        text = (f"{title}: lead {lead} (pool {pool}, rule {rule or '?'}); first touch due by"
                f" {_when_text(due)} ({sla_class}).")

    summary_lines: list[str] = [f"*Lead* `{_esc(lead)}`" + (f" · cycle {cycle}" if cycle else "")]
    if handover:
        score = handover.get("score")
        bits = [f"score *{score}*" if score is not None else None, handover.get("path")]
        head = " · ".join(_esc(str(b)) for b in bits if b)
        if head:
            summary_lines[0] += f" · {head}"
        who = _who(handover)
        if who:
            summary_lines.append(f"*Who* {_esc(who)}")
            text += f" Who: {who}."
        if handover.get("email"):
            summary_lines.append(f"*Email* {_esc(handover['email'])}")
        if handover.get("intent_signals"):
            summary_lines.append("*Intent* " + _esc(", ".join(handover["intent_signals"])))
        if handover.get("talking_points"):
            points = ", ".join(handover["talking_points"])
            summary_lines.append(f"*Talk about* {_esc(points)}")
            text += f" Talk about: {points}."
        if score is not None:
            text += f" Score {score}."

    fields = [
        _field("Rep", _esc(rep) if rep else "_none yet_"),
        _field("Pool", _esc(pool)),
        _field("Rule", _esc(rule) if rule else "_queued_"),
        _field("SLA", _esc(sla_class.replace("_", " "))),
        _field("First touch due", _when_mrkdwn(due)),
    ]
    blocks: list[dict[str, Any]] = [
        _header(title),
        _section("\n".join(summary_lines)),
        {"type": "section", "fields": fields},
    ]
    context = []
    if trace:
        context.append("Routing: " + _esc("; ".join(trace)))
    event_id = _str(event.get("event_id"))
    if event_id:
        context.append(f"event `{_esc(event_id)}`")
    if context:
        blocks.append(_context(*context))
    return {"text": _clip(_esc(text), 3000), "blocks": blocks}


def _sla_message(event: dict[str, Any]) -> dict[str, Any]:
    kind = event.get("type")
    lead = _str(event.get("lead_id")) or "?"
    rep = _str(event.get("rep_id"))
    pool = _str(event.get("pool")) or "?"
    sla_class = _str(event.get("sla_class")) or "?"
    due = event.get("due_at")
    detail = _str(event.get("detail"))
    reassigned = _str(event.get("reassigned_to"))
    holder = f"rep {rep}" if rep else f"nobody (queued in pool {pool})"

    if kind == "sla.warning":
        title = f":warning: SLA warning: lead {lead}"
        text = (f"SLA warning: lead {lead} has no first touch yet from {holder}; due by"
                f" {_when_text(due)} ({sla_class}, pool {pool}).")
    else:
        title = f":rotating_light: SLA breached: lead {lead}"
        text = (f"SLA breached: lead {lead} got no first touch from {holder} by"
                f" {_when_text(due)} ({sla_class}, pool {pool}).")
        if reassigned:
            text += f" Reassigned to rep {reassigned}."
    if detail:
        text += f" Router: {detail}."

    fields = [
        _field("Lead", f"`{_esc(lead)}`"),
        _field("Rep", _esc(rep) if rep else "_nobody (queued)_"),
        _field("Due", _when_mrkdwn(due)),
        _field("SLA", f"{_esc(sla_class.replace('_', ' '))}, pool {_esc(pool)}"),
    ]
    if reassigned:
        fields.append(_field("Reassigned to", _esc(reassigned)))
    blocks: list[dict[str, Any]] = [_header(title), {"type": "section", "fields": fields}]
    context = []
    if detail:
        context.append(_esc(detail))
    event_id = _str(event.get("event_id"))
    if event_id:
        context.append(f"event `{_esc(event_id)}`")
    if context:
        blocks.append(_context(*context))
    plain = text.replace(":warning: ", "").replace(":rotating_light: ", "")
    return {"text": _clip(_esc(plain), 3000), "blocks": blocks}


def format_message(event: dict[str, Any], handover: dict[str, Any] | None = None
                   ) -> dict[str, Any] | None:
    """The Slack-compatible message for one `leads.assignments` / `leads.sla` event, or None
    when the event is not posted (`sla.met`, an unknown type, not an object).

    `handover` is an optional `handover_summary` of the lead's `lead.sql` (same lead and
    cycle); without it an assignment message carries only what the assignment event holds
    (rep, pool, rule, SLA, routing trace). Untrusted text is escaped for mrkdwn and clipped to
    Slack's block limits; `text` is always set (the fallback for notifications and clients
    that do not render blocks)."""
    if not isinstance(event, dict):
        return None
    kind = event.get("type")
    if kind in ASSIGNMENT_TYPES:
        return _assignment_message(event, handover)
    if kind in SLA_ALERT_TYPES:
        return _sla_message(event)
    return None


# --------------------------------------------------------------------------------------------
# Retry policy (pure)
# --------------------------------------------------------------------------------------------


class Outcome(StrEnum):
    DELIVERED = "delivered"  # 2xx
    RETRY = "retry"  # connection error, timeout, 408, 429, 5xx
    PERMANENT = "permanent"  # any other status: this message will never be accepted


def classify_status(status: int) -> Outcome:
    """2xx delivered; 408 (request timeout), 429 (rate limited) and 5xx retried; any other
    status (400 bad payload, 403/404/410 revoked or archived webhook, unfollowed 3xx) is a
    permanent failure for this message."""
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in (408, 429) or status >= 500:
        return Outcome.RETRY
    return Outcome.PERMANENT


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 30.0,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1 = first retry): exponential
    (base, 2 base, 4 base, ...) capped at `cap`, with "equal jitter": uniformly in
    [ceiling / 2, ceiling], so retries of several notifiers spread out but never hammer."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 60))
    r = rng if rng is not None else random
    return ceiling / 2 + r.uniform(0.0, ceiling / 2)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` in seconds (delta-seconds or an HTTP date); None when absent or invalid."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def retry_delay(attempt: int, retry_after: float | None, *, base: float = 0.5,
                cap: float = 30.0, rng: random.Random | None = None) -> float:
    """The wait before retry `attempt`: the backoff, but never less than what the server asked
    for in `Retry-After` (itself capped at 10 minutes, against absurd values)."""
    delay = backoff_delay(attempt, base=base, cap=cap, rng=rng)
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP_SECONDS))
    return delay


def redact_url(url: str) -> str:
    """`https://hooks.slack.com/services/T0/B0/secret` -> `https://hooks.slack.com/…`: the
    path of an incoming-webhook URL is its credential."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def validate_webhook_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook URL must be http(s)://host/..., got {redact_url(url)!r}")
    return url.strip()


class RecentIds:
    """A bounded set of the most recently seen ids (LRU): dedupe without unbounded memory."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item: str) -> None:
        self._ids[item] = None
        self._ids.move_to_end(item)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


class LruCache:
    """A bounded mapping, oldest entry evicted first (handover summaries by lead and cycle)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._items.get(key)

    def __len__(self) -> int:
        return len(self._items)


# --------------------------------------------------------------------------------------------
# Posting
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    outcome: Outcome
    status: int | None = None
    retry_after: float | None = None
    error: str | None = None
    body: str = ""


Result = Literal["delivered", "rejected", "gave_up", "stopped", "abandoned"]


@dataclass(frozen=True)
class Delivery:
    result: Result
    attempts: int
    last: Attempt


class WebhookPoster:
    """Posts one message until it is delivered, refused for good, or retries run out."""

    def __init__(self, session: aiohttp.ClientSession, url: str, *, max_retries: int = 0,
                 backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 stop: asyncio.Event | None = None, rng: random.Random | None = None) -> None:
        self._session = session
        self._url = url
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._stop = stop if stop is not None else asyncio.Event()
        self._rng = rng if rng is not None else random.Random()

    async def attempt(self, body: bytes) -> Attempt:
        import aiohttp

        try:
            async with self._session.post(
                self._url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                text = (await resp.content.read(300)).decode("utf-8", "replace")
                return Attempt(classify_status(resp.status), resp.status,
                               parse_retry_after(resp.headers.get("Retry-After")), None, text)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # the message of an aiohttp error can carry the URL: keep only the class
            return Attempt(Outcome.RETRY, error=type(exc).__name__)

    async def _wait(self, seconds: float) -> bool:
        """Sleep, unless asked to stop first (returns False then)."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def deliver(self, body: bytes, abort: Callable[[], bool] = lambda: False,
                      context: dict[str, Any] | None = None) -> Delivery:
        ctx = context or {}
        attempts = 0
        while True:
            attempts += 1
            last = await self.attempt(body)
            if last.outcome is Outcome.DELIVERED:
                return Delivery("delivered", attempts, last)
            if last.outcome is Outcome.PERMANENT:
                return Delivery("rejected", attempts, last)
            if self.max_retries and attempts > self.max_retries:
                return Delivery("gave_up", attempts, last)
            delay = retry_delay(attempts, last.retry_after, base=self.backoff_base,
                                cap=self.backoff_cap, rng=self._rng)
            log.warning("webhook post failed, retrying", extra={
                **ctx, "attempt": attempts, "status": last.status, "error": last.error,
                "retry_after": last.retry_after, "retry_in_seconds": round(delay, 3)})
            if abort():
                return Delivery("abandoned", attempts, last)
            if not await self._wait(delay):
                return Delivery("stopped", attempts, last)
            if abort():
                return Delivery("abandoned", attempts, last)


# --------------------------------------------------------------------------------------------
# The consumer loop
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotifyConfig:
    webhook_url: str
    settings: Settings = field(default_factory=Settings)
    group: str | None = None
    max_retries: int = 0
    timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    offset_reset: str = "latest"
    handover: bool = True
    dedupe_size: int = 100_000
    handover_cache_size: int = 20_000
    max_messages: int | None = None
    idle_exit_seconds: float | None = None

    def __post_init__(self) -> None:
        validate_webhook_url(self.webhook_url)
        if self.max_retries < 0:
            raise ValueError("--max-retries must be 0 (retry forever) or more")
        if self.timeout <= 0:
            raise ValueError("--timeout must be positive")
        if self.backoff_base <= 0 or self.backoff_cap < self.backoff_base:
            raise ValueError("need 0 < --backoff-base <= --backoff-cap")
        if self.offset_reset not in ("latest", "earliest"):
            raise ValueError("--offset-reset must be 'latest' or 'earliest'")

    @property
    def group_id(self) -> str:
        return self.group or f"{self.settings.topic_prefix}leadrouter-notify"


def decode_event(raw: bytes | None) -> dict[str, Any]:
    """The record value as a JSON object; ValueError (with the reason) otherwise."""
    if raw is None:
        raise ValueError("null value")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object but {type(value).__name__}")
    return value


class BrokerUnavailable(RuntimeError):
    """No broker answered within `broker_wait_seconds`."""


class Notifier:
    """Consume, format, post, then commit. One message in flight at a time, in partition order.

    `stats` counts outcomes: posted, rejected, gave_up, duplicate, skipped (sla.met, non-SQL
    transitions), unknown_type, undecodable, unformattable, handover_cached."""

    def __init__(self, config: NotifyConfig, rng: random.Random | None = None) -> None:
        from router.adapters.topics import Topics

        self.config = config
        self.topics = Topics.with_prefix(config.settings.topic_prefix)
        self.stats: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._rng = rng
        self._seen = RecentIds(config.dedupe_size)
        self._handovers = LruCache(config.handover_cache_size)
        self._unknown_logged: set[str] = set()
        self._pending: dict[Any, int] = {}
        self._handled = 0

    @property
    def subscribed(self) -> list[str]:
        names = [self.topics.assignments, self.topics.sla]
        if self.config.handover:
            names.append(self.topics.transitions)
        return names

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def _connect(self) -> Any:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.coordinator.assignors.range import RangePartitionAssignor
        from aiokafka.errors import KafkaError

        s = self.config.settings
        session_ms = int(s.session_timeout_seconds * 1000)
        deadline = time.monotonic() + s.broker_wait_seconds
        attempt = 0
        while True:
            attempt += 1
            consumer = AIOKafkaConsumer(
                *self.subscribed,
                bootstrap_servers=bootstrap_servers(s.broker),
                group_id=self.config.group_id,
                client_id=f"{self.config.group_id}-{os.getpid()}",
                enable_auto_commit=False,
                auto_offset_reset=self.config.offset_reset,
                # range: partition p of assignments and of transitions (both keyed by lead
                # with the same partition count) go to the same notifier, so the lead.sql
                # handover is in the memory of the process that posts the assignment
                partition_assignment_strategy=(RangePartitionAssignor,),
                session_timeout_ms=session_ms,
                heartbeat_interval_ms=max(100, min(3000, session_ms // 3)),
                # a message retried through a long webhook outage blocks the loop on purpose;
                # heartbeats keep the membership (a dead process still leaves after the
                # session timeout), so do not quit the group after 5 idle minutes and hand
                # the blocked message to another notifier to post twice
                max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
                fetch_max_wait_ms=s.fetch_wait_ms(),
                **s.kafka_client_kwargs(),
            )
            try:
                await consumer.start()
                return consumer
            except (KafkaError, OSError) as exc:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                if time.monotonic() >= deadline or self.stopping:
                    raise BrokerUnavailable(
                        f"cannot reach the Kafka broker at {s.broker} after"
                        f" {s.broker_wait_seconds:.0f} s and {attempt} attempts: {exc}") from None
                log.warning("broker not reachable yet, retrying",
                            extra={"broker": s.broker, "attempt": attempt, "error": str(exc)})
                await asyncio.sleep(min(2.0, 0.2 * attempt))

    async def _commit(self, consumer: Any) -> None:
        """Commit the next offset of every partition whose records are all done with."""
        from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

        if not self._pending:
            return
        assigned = consumer.assignment()
        offsets = {tp: off for tp, off in self._pending.items() if tp in assigned}
        self._pending.clear()
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # the group rebalanced: whoever owns the partition now resumes from the last
            # commit (the dedupe set drops what this process posted, if it gets it back)
            log.warning("offset commit failed; the records may be redelivered",
                        extra={"error": f"{type(exc).__name__}: {exc}",
                               "offsets": {f"{tp.topic}[{tp.partition}]": o
                                           for tp, o in offsets.items()}})

    def _order(self, tps: Iterable[Any]) -> list[Any]:
        """Transitions first: a lead.sql fetched with its assignment is cached before it."""
        return sorted(tps, key=lambda tp: (tp.topic != self.topics.transitions,
                                           tp.topic, tp.partition))

    async def run(self) -> Counter[str]:
        import aiohttp

        consumer = await self._connect()
        log.info("notifier started", extra={
            "topics": self.subscribed, "group": self.config.group_id,
            "webhook": redact_url(self.config.webhook_url),
            "max_retries": self.config.max_retries, "offset_reset": self.config.offset_reset})
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                poster = WebhookPoster(
                    session, self.config.webhook_url, max_retries=self.config.max_retries,
                    backoff_base=self.config.backoff_base, backoff_cap=self.config.backoff_cap,
                    stop=self._stop, rng=self._rng)
                await self._loop(consumer, poster)
        finally:
            await self._commit(consumer)
            with contextlib.suppress(Exception):
                await consumer.stop()
            log.info("notifier stopped", extra={"stats": dict(self.stats)})
        return self.stats

    async def _loop(self, consumer: Any, poster: WebhookPoster) -> None:
        idle_since = time.monotonic()
        while not self.stopping:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            if not batches:
                idle = self.config.idle_exit_seconds
                if idle is not None and time.monotonic() - idle_since >= idle:
                    log.info("idle, exiting", extra={"idle_seconds": idle})
                    return
                continue
            idle_since = time.monotonic()
            for tp in self._order(batches):
                for record in batches[tp]:
                    if self.stopping or tp not in consumer.assignment():
                        break  # stop, or the partition was revoked: its new owner resumes it
                    done = await self._handle(tp, record, poster, consumer)
                    if done in ("stopped", "abandoned"):
                        break
                    self._pending[tp] = record.offset + 1
                    if done == "posted":
                        await self._commit(consumer)
                    self._handled += 1
                    if self.config.max_messages and self._handled >= self.config.max_messages:
                        self.stop()
            await self._commit(consumer)

    def _log_once_unknown(self, kind: str, record: Any) -> None:
        self.stats["unknown_type"] += 1
        if kind in self._unknown_logged:
            return
        if len(self._unknown_logged) < 1000:
            self._unknown_logged.add(kind)
        log.warning("unknown event type, skipped (logged once per type)", extra={
            "type": kind[:100], "topic": record.topic, "partition": record.partition,
            "offset": record.offset})

    async def _handle(self, tp: Any, record: Any, poster: WebhookPoster, consumer: Any
                      ) -> Literal["skipped", "posted", "stopped", "abandoned"]:
        where = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        try:
            event = decode_event(record.value)
        except ValueError as exc:
            self.stats["undecodable"] += 1
            log.warning("undecodable record skipped", extra={**where, "error": str(exc)[:200]})
            return "skipped"

        kind = event.get("type")
        if record.topic == self.topics.transitions:
            summary = handover_summary(event)
            if summary is not None and summary["lead_id"]:
                self._handovers.put(f"{summary['lead_id']}:{summary['cycle']}", summary)
                self.stats["handover_cached"] += 1
            else:
                self.stats["skipped"] += 1
            return "skipped"
        if kind in SKIPPED_TYPES:
            self.stats["skipped"] += 1
            return "skipped"
        if not isinstance(kind, str) or kind not in POSTED_TYPES:
            self._log_once_unknown(str(kind), record)
            return "skipped"

        event_id = _str(event.get("event_id"))
        if event_id is not None and event_id in self._seen:
            self.stats["duplicate"] += 1
            log.debug("repeated event_id skipped", extra={**where, "event_id": event_id})
            return "skipped"
        handover = None
        if kind in ASSIGNMENT_TYPES:
            handover = self._handovers.get(f"{event.get('lead_id')}:{event.get('cycle')}")
        message = format_message(event, handover)
        if message is None:
            self.stats["unformattable"] += 1
            log.warning("event could not be formatted, skipped", extra=where)
            return "skipped"

        ctx = {**where, "event_id": event_id, "type": kind,
               "lead_id": _str(event.get("lead_id")), "rep_id": _str(event.get("rep_id"))}
        delivery = await poster.deliver(orjson.dumps(message),
                                        abort=lambda: tp not in consumer.assignment(),
                                        context=ctx)
        last = delivery.last
        if delivery.result in ("stopped", "abandoned"):
            log.info("post interrupted; the message is left uncommitted",
                     extra={**ctx, "reason": delivery.result})
            return delivery.result
        if event_id is not None:
            self._seen.add(event_id)
        if delivery.result == "delivered":
            self.stats["posted"] += 1
            log.info("posted", extra={**ctx, "attempts": delivery.attempts,
                                      "handover": handover is not None})
        elif delivery.result == "rejected":
            self.stats["rejected"] += 1
            log.error("webhook refused the message for good; skipped", extra={
                **ctx, "status": last.status, "response": last.body[:200]})
        else:
            self.stats["gave_up"] += 1
            log.error("gave up on the message after --max-retries; skipped", extra={
                **ctx, "attempts": delivery.attempts, "status": last.status,
                "error": last.error})
        return "posted"


async def run_notifier(config: NotifyConfig, install_signals: bool = True) -> Counter[str]:
    """Run until SIGTERM/SIGINT (or --max-messages / --idle-exit-seconds)."""
    notifier = Notifier(config)
    loop = asyncio.get_running_loop()
    installed = []
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, notifier.stop)
                installed.append(sig)
    try:
        return await notifier.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--webhook-url", default=None,
                   help=f"Slack-compatible incoming-webhook URL [env {WEBHOOK_ENV}; prefer the"
                   " env or --webhook-url-file: the URL is a secret and argv is visible in ps]")
    p.add_argument("--webhook-url-file", default=None, help="file holding the webhook URL")
    p.add_argument("--broker", default=None,
                   help="Kafka bootstrap URL [env LEADROUTER_BROKER; default"
                   " kafka://127.0.0.1:9092]; TLS/SASL from LEADROUTER_SECURITY_PROTOCOL,"
                   " LEADROUTER_SASL_* and LEADROUTER_SSL_* as for the worker")
    p.add_argument("--topic-prefix", default=None, help="[env LEADROUTER_TOPIC_PREFIX]")
    p.add_argument("--group", default=None,
                   help="consumer group (default <prefix>leadrouter-notify)")
    p.add_argument("--max-retries", type=int, default=0,
                   help="retries per message before giving up on it (logged, skipped);"
                   " 0 = retry forever, blocking the stream while the webhook is down"
                   " (default 0)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds per HTTP attempt (default 10)")
    p.add_argument("--backoff-base", type=float, default=0.5,
                   help="first retry delay in seconds, doubled per retry (default 0.5)")
    p.add_argument("--backoff-cap", type=float, default=30.0,
                   help="longest retry delay in seconds (default 30)")
    p.add_argument("--offset-reset", choices=("latest", "earliest"), default="latest",
                   help="where a new group starts: latest (default; no flood of history) or"
                   " earliest; a group with committed offsets resumes from them")
    p.add_argument("--no-handover", dest="handover", action="store_false",
                   help="do not read leads.transitions for the lead.sql handover summary")
    p.add_argument("--max-messages", type=int, default=None,
                   help="exit after this many records (tests)")
    p.add_argument("--idle-exit-seconds", type=float, default=None,
                   help="exit after this long without records (tests)")


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None
                     ) -> NotifyConfig:
    env = dict(os.environ) if environ is None else environ
    settings = from_env(env)
    overrides: dict[str, Any] = {}
    if getattr(args, "broker", None):
        overrides["broker"] = args.broker
    if getattr(args, "topic_prefix", None) is not None:
        overrides["topic_prefix"] = args.topic_prefix
    settings = replace(settings, **overrides)
    url = args.webhook_url
    if not url and args.webhook_url_file:
        url = Path(args.webhook_url_file).read_text(encoding="utf-8").strip()
    if not url:
        url = env.get(WEBHOOK_ENV, "")
    if not url:
        raise ValueError(f"a webhook URL is needed: --webhook-url, --webhook-url-file or"
                         f" {WEBHOOK_ENV}")
    return NotifyConfig(
        webhook_url=url, settings=settings, group=args.group, max_retries=args.max_retries,
        timeout=args.timeout, backoff_base=args.backoff_base, backoff_cap=args.backoff_cap,
        offset_reset=args.offset_reset, handover=args.handover,
        max_messages=args.max_messages, idle_exit_seconds=args.idle_exit_seconds)


def main(args: argparse.Namespace) -> int:
    """`leadrouter notify`: exit 0 on a clean stop, 2 on bad configuration or no broker."""
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"leadrouter notify: {exc}", file=sys.stderr)
        return 2
    logging.config.dictConfig(logging_config(config.settings.log_format,
                                             config.settings.log_level))
    try:
        asyncio.run(run_notifier(config))
    except BrokerUnavailable as exc:
        print(f"leadrouter notify: {exc}", file=sys.stderr)
        return 2
    return 0
