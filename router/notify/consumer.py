"""The notifier's Kafka side: `Notifier` consumes the router's output topics in its own group,
dispatches each record (decode, dedupe, cache `lead.sql` handovers, format, post), and commits
an offset only once the message it covers is done with; `run_notifier` runs it until a signal.

This is the at-least-once loop: one message in flight at a time, in partition order. The
formatting is in `router.notify.format`, the posting and retries in `router.notify.delivery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from router.notify.delivery import WebhookPoster, redact_url, validate_webhook_url
from router.notify.format import (
    ASSIGNMENT_TYPES,
    POSTED_TYPES,
    SKIPPED_TYPES,
    _str,
    format_message,
    handover_summary,
)
from router.settings import Settings, bootstrap_servers

log = logging.getLogger("router.notify")

MAX_POLL_INTERVAL_MS = 24 * 3600 * 1000


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

