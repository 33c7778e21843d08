"""The reference notifier on the real embedded broker, posting to a local HTTP server on
127.0.0.1: repeats are posted once, a webhook outage blocks (and commits nothing past the
blocked message) until it recovers, a crashed notifier resumes from its committed offsets, a
400 skips one message only. No router worker: the events are built with the pydantic models
and produced straight to the output topics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import RecordMetadata

from router.adapters.topics import Topics, ensure_topics
from router.domain.events import Assignment, SlaEvent, Transition
from router.harness.brokers import LocalBroker
from router.notify import Notifier, NotifyConfig
from router.settings import Settings
from tests.integration.conftest import new_prefix, send

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
COMMON: dict[str, Any] = {"router_version": "test", "rules_version": "default@1",
                          "emitted_at": NOW.isoformat()}
DUE = (NOW + timedelta(minutes=5)).isoformat()
EMAIL = "ana.ruiz@acme.io"
NAME = "Ana Ruiz"
EVENT_ID = re.compile(r"event `([^`]+)`")


# --------------------------------------------------------------------------------------------
# Events (valid by construction: validated by the router's own models)
# --------------------------------------------------------------------------------------------


def wire(model: Any) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(
        orjson.dumps(model.model_dump(mode="json", by_alias=True)))
    return result


def assignment(lead: str, n: int = 1, rep: str = "R-07",
               kind: str = "lead.assigned") -> dict[str, Any]:
    return wire(Assignment.model_validate({
        "event_id": f"{lead}:c1:assign:{n}", "type": kind, "lead_id": lead, "cycle": 1,
        "rep_id": rep, "pool": "EMEA-MM",
        "rule": "round_robin" if n == 1 else "reassign_after_breach",
        "trace": [{"rep_id": "R-04", "skipped": "at_capacity", "detail": "30/30 open"},
                  {"rep_id": rep, "chosen": "round_robin"}],
        "sla": {"class": "high_intent", "due_at": DUE}, **COMMON}))


def sla(lead: str, kind: str, rep: str = "R-07") -> dict[str, Any]:
    return wire(SlaEvent.model_validate({
        "event_id": f"{lead}:c1:{kind}", "type": kind, "lead_id": lead, "cycle": 1,
        "rep_id": rep, "pool": "EMEA-MM", "sla_class": "high_intent",
        "started_at": NOW.isoformat(), "due_at": DUE,
        "occurred_at": (NOW + timedelta(minutes=4)).isoformat(),
        "response_seconds": 60.0 if kind == "sla.met" else None, **COMMON}))


def sql(lead: str) -> dict[str, Any]:
    profile = {"lead_id": lead, "email": EMAIL, "name": NAME, "title": "VP Sales",
               "seniority": "vp", "company": {"name": "Acme", "employees": 420,
                                              "industry": "saas"}}
    return wire(Transition.model_validate({
        "event_id": f"{lead}:c1:sql", "type": "lead.sql", "lead_id": lead, "cycle": 1,
        "from_stage": "mql", "to_stage": "sql", "path": "direct", "triggered_by": "tp-1",
        "occurred_at": NOW.isoformat(), "criteria": {}, "score": 91,
        "handover": {"profile": profile, "fit": {}, "engagement_timeline": [],
                     "intent_signals": [], "authority": {}, "score": 91,
                     "talking_points": ["data quality"], "sla_class": "high_intent"},
        **COMMON}))


# --------------------------------------------------------------------------------------------
# A webhook on 127.0.0.1 that records every request
# --------------------------------------------------------------------------------------------

Decide = Callable[[str, int], Awaitable[int]]  # (event_id, nth request) -> HTTP status


class Hook:
    def __init__(self, decide: Decide | None = None) -> None:
        self.decide = decide
        self.arrivals: list[str] = []  # event_id of every request, as it arrives
        self.requests: list[tuple[str, int]] = []  # (event_id, status answered)
        self.bodies: dict[str, bytes] = {}
        self.check: Callable[[str], Awaitable[None]] | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        message = orjson.loads(raw)
        assert isinstance(message.get("text"), str) and message["text"]
        found = EVENT_ID.search(raw.decode())
        event_id = found.group(1) if found else "?"
        self.arrivals.append(event_id)
        if self.check is not None:
            await self.check(event_id)  # the notifier waits for us: it cannot commit now
        code = await self.decide(event_id, len(self.arrivals)) if self.decide else 200
        self.requests.append((event_id, code))
        self.bodies.setdefault(event_id, raw)
        return web.Response(status=code, text="ok" if code < 300 else "invalid_payload")

    def delivered(self) -> Counter[str]:
        return Counter(e for e, code in self.requests if code == 200)

    def attempts(self) -> Counter[str]:
        return Counter(self.arrivals)

    async def __aenter__(self) -> Hook:
        app = web.Application()
        app.router.add_post("/services/T0/B0/secret", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=2.0)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/services/T0/B0/secret"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await asyncio.wait_for(self._runner.cleanup(), 10)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


async def make_topics(broker: LocalBroker, partitions: int = 3) -> tuple[str, Topics]:
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    await ensure_topics(Settings(broker=broker.url, topic_prefix=prefix, partitions=partitions,
                                 broker_wait_seconds=20), topics)
    return prefix, topics


def config(broker: LocalBroker, prefix: str, hook: Hook, **kw: Any) -> NotifyConfig:
    return NotifyConfig(
        webhook_url=hook.url,
        settings=Settings(broker=broker.url, topic_prefix=prefix, session_timeout_seconds=6,
                          broker_wait_seconds=20),
        group=f"{prefix}notify", offset_reset="earliest", timeout=5.0, backoff_base=0.05,
        backoff_cap=0.2, **kw)


@contextlib.asynccontextmanager
async def running(cfg: NotifyConfig) -> AsyncIterator[Notifier]:
    """An in-process notifier, always stopped (bounded) on the way out."""
    notifier = Notifier(cfg)
    task = asyncio.create_task(notifier.run())
    try:
        yield notifier
    finally:
        notifier.stop()
        await asyncio.wait_for(task, 30)


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def committed(broker: LocalBroker, group: str, tps: list[TopicPartition]
                    ) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        # always name the partitions: the broker answers a broken frame otherwise
        offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
        return {tp: (offsets[tp].offset if tp in offsets else -1) for tp in tps}
    finally:
        await admin.close()


def end_offsets(sent: list[RecordMetadata]) -> dict[TopicPartition, int]:
    ends: dict[TopicPartition, int] = {}
    for m in sent:
        tp = TopicPartition(m.topic, m.partition)
        ends[tp] = max(ends.get(tp, 0), m.offset + 1)
    return ends


class CommitWatch:
    """Called by the hook on every request: the group's committed offset of the message's
    partition must not be past the message while its post has not succeeded."""

    def __init__(self, broker: LocalBroker, group: str,
                 where: dict[str, RecordMetadata]) -> None:
        self.broker, self.group, self.where = broker, group, where
        self.checked = 0
        self.violations: list[str] = []

    async def __call__(self, event_id: str) -> None:
        meta = self.where[event_id]
        tp = TopicPartition(meta.topic, meta.partition)
        offset = (await committed(self.broker, self.group, [tp]))[tp]
        self.checked += 1
        if offset > meta.offset:
            self.violations.append(f"{event_id} at {tp}@{meta.offset}: committed {offset}")


def notifier_process(broker: LocalBroker, prefix: str, hook: Hook, log: Path
                     ) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LEADROUTER_SESSION_TIMEOUT_SECONDS": "6",
           "LEADROUTER_LOG_FORMAT": "text", "LEADROUTER_NOTIFY_WEBHOOK_URL": hook.url}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "router", "notify", "--broker", broker.url,
             "--topic-prefix", prefix, "--group", f"{prefix}notify", "--offset-reset",
             "earliest", "--timeout", "30", "--backoff-base", "0.05", "--backoff-cap", "0.2"],
            stdout=out, stderr=subprocess.STDOUT, env=env)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_each_event_is_posted_once_masked_and_junk_is_skipped(
    broker: LocalBroker, producer: AIOKafkaProducer
) -> None:
    prefix, topics = await make_topics(broker)
    async with Hook() as hook:
        cfg = config(broker, prefix, hook)
        async with running(cfg) as notifier:
            sent = [await send(producer, topics.transitions, "L-1", sql("L-1"))]
            await until(lambda: notifier.stats["handover_cached"] >= 1, 60,
                        "the lead.sql handover to be read")
            records: list[tuple[str, str, dict[str, Any] | bytes]] = [
                (topics.assignments, "L-1", assignment("L-1")),
                (topics.assignments, "L-1", assignment("L-1")),  # a repeat (same event_id)
                (topics.sla, "L-1", sla("L-1", "sla.warning")),
                (topics.sla, "L-1", sla("L-1", "sla.met")),  # not posted, by choice
                (topics.sla, "L-2", sla("L-2", "sla.breached")),
                (topics.assignments, "L-2", assignment("L-2")),
                (topics.assignments, "L-2", b"\xffnot json at all"),
                (topics.sla, "L-2", {"type": "lead.teleported", "event_id": "odd-1"}),
                (topics.sla, "L-2", {"type": "lead.teleported", "event_id": "odd-2"}),
                (topics.sla, "L-2", sla("L-2", "sla.breached")),  # a repeat
                (topics.assignments, "L-3", assignment("L-3")),
            ]
            for topic, key, value in records:
                sent.append(await send(producer, topic, key, value))
            expected = {"L-1:c1:assign:1", "L-1:c1:sla.warning", "L-2:c1:sla.breached",
                        "L-2:c1:assign:1", "L-3:c1:assign:1"}
            await until(lambda: set(hook.delivered()) >= expected, 60, "all posts")
            ends = end_offsets(sent)
            await until(lambda: notifier.stats.total() >= len(sent), 30, "every record")
        offsets = await committed(broker, cfg.group_id, list(ends))

    assert hook.attempts() == dict.fromkeys(expected, 1), hook.requests
    assert offsets == ends  # everything done with, junk included, is committed
    stats = notifier.stats
    assert (stats["posted"], stats["duplicate"], stats["skipped"]) == (5, 2, 1)
    assert (stats["undecodable"], stats["unknown_type"]) == (1, 2)

    body = hook.bodies["L-1:c1:assign:1"]
    message = orjson.loads(body)
    assert message["text"].startswith("New SQL for rep R-07: lead L-1")
    assert "A. R., VP Sales @ Acme" in message["text"] and "Score 91" in message["text"]
    assert b"a***@acme.io" in body
    for raw in hook.bodies.values():
        assert EMAIL.encode() not in raw and NAME.encode() not in raw and b"Ruiz" not in raw
    assert orjson.loads(hook.bodies["L-2:c1:sla.breached"])["text"].startswith(
        "SLA breached: lead L-2")


@pytest.mark.timeout(150)
async def test_outage_blocks_the_stream_and_nothing_is_committed_before_its_post(
    broker: LocalBroker, producer: AIOKafkaProducer
) -> None:
    prefix, topics = await make_topics(broker)
    sent: dict[str, RecordMetadata] = {}
    leads = [f"L-{i}" for i in range(6)]
    for n in (1, 2):
        for lead in leads:
            event = assignment(lead, n, kind="lead.assigned" if n == 1 else "lead.reassigned")
            sent[event["event_id"]] = await send(producer, topics.assignments, lead, event)
    assert len({m.partition for m in sent.values()}) > 1

    failures = 6

    async def decide(event_id: str, n: int) -> int:
        if n <= failures:
            return 503 if n % 2 else 500
        return 429 if n == failures + 1 else 200

    async with Hook(decide) as hook:
        cfg = config(broker, prefix, hook)
        watch = CommitWatch(broker, cfg.group_id, sent)
        hook.check = watch
        async with running(cfg):
            await until(lambda: set(hook.delivered()) >= set(sent), 90, "every message")
            await asyncio.sleep(1.0)  # anything extra would show now
        offsets = await committed(broker, cfg.group_id, list(end_offsets(list(sent.values()))))

    # blocked, not skipped: every failed request was for one message, retried until it went
    failed = [e for e, code in hook.requests if code != 200]
    assert len(failed) == failures + 1 and len(set(failed)) == 1, hook.requests
    assert hook.requests[failures + 1] == (failed[0], 200)
    # delivered exactly once each, none missing, in offset order within each partition
    assert hook.delivered() == dict.fromkeys(sent, 1)
    order = [e for e, code in hook.requests if code == 200]
    for partition in {m.partition for m in sent.values()}:
        mine = [e for e in order if sent[e].partition == partition]
        assert mine == sorted(mine, key=lambda e: sent[e].offset)
    # the committed offset never passed a message whose post had not succeeded yet
    assert watch.checked == len(hook.requests) and not watch.violations, watch.violations
    assert offsets == end_offsets(list(sent.values()))


@pytest.mark.timeout(200)
async def test_a_crashed_notifier_resumes_from_its_commits(
    broker: LocalBroker, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    prefix, topics = await make_topics(broker, partitions=2)
    sent: dict[str, RecordMetadata] = {}
    for i in range(10):
        event = assignment(f"L-c{i}")
        sent[event["event_id"]] = await send(producer, topics.assignments, f"L-c{i}", event)

    in_flight = asyncio.Event()
    release = asyncio.Event()
    hung: list[str] = []

    async def decide(event_id: str, n: int) -> int:
        if n == 4:  # the 4th post hangs until the notifier has been killed
            hung.append(event_id)
            in_flight.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 60)
        return 200

    log = tmp_path / "notify.log"
    async with Hook(decide) as hook:
        watch = CommitWatch(broker, f"{prefix}notify", sent)
        hook.check = watch
        first = notifier_process(broker, prefix, hook, log)
        try:
            await asyncio.wait_for(in_flight.wait(), 90)
            first.kill()  # SIGKILL mid-post: no chance to commit or say goodbye
            await asyncio.to_thread(first.wait, 10)
        finally:
            if first.poll() is None:
                first.kill()
            release.set()
        before = Counter(hook.attempts())
        assert sum(before.values()) == 4

        second = notifier_process(broker, prefix, hook, log)
        try:
            await until(lambda: set(hook.delivered()) >= set(sent), 120,
                        "every message after the restart")
            await asyncio.sleep(1.0)
        finally:
            code = await asyncio.to_thread(stop_process, second)
        offsets = await committed(broker, f"{prefix}notify",
                                  list(end_offsets(list(sent.values()))))

    text = log.read_text()
    assert code == 0, text[-3000:]  # SIGTERM is a clean stop
    assert "notifier stopped" in text
    assert "/services/T0/B0/secret" not in text  # the webhook URL is a secret
    attempts = hook.attempts()
    assert set(attempts) == set(sent)  # nothing lost
    # the at-least-once window is the one post in flight at the crash; messages delivered
    # before it were committed and are not posted again
    assert hung and attempts[hung[0]] == 2, attempts
    assert all(count == 1 for e, count in attempts.items() if e != hung[0]), attempts
    assert not watch.violations, watch.violations
    assert offsets == end_offsets(list(sent.values()))


@pytest.mark.timeout(120)
async def test_a_refused_message_is_skipped_and_the_next_one_delivered(
    broker: LocalBroker, producer: AIOKafkaProducer
) -> None:
    prefix, topics = await make_topics(broker, partitions=1)
    events = [assignment("L-r", n) for n in range(1, 5)]
    refused, failing = events[1]["event_id"], events[2]["event_id"]

    async def decide(event_id: str, n: int) -> int:
        return {refused: 400, failing: 502}.get(event_id, 200)

    sent = [await send(producer, topics.assignments, "L-r", e) for e in events]
    async with Hook(decide) as hook:
        cfg = config(broker, prefix, hook, max_retries=2)
        async with running(cfg) as notifier:
            await until(lambda: events[-1]["event_id"] in hook.delivered(), 60,
                        "the message after the refused ones")
            await asyncio.sleep(0.5)
        offsets = await committed(broker, cfg.group_id, list(end_offsets(sent)))

    attempts = hook.attempts()
    assert attempts[refused] == 1  # 400: permanent, never retried
    assert attempts[failing] == 3  # 502 with --max-retries 2: 3 attempts, then skipped
    assert hook.delivered() == {events[0]["event_id"]: 1, events[3]["event_id"]: 1}
    assert [e for e, _ in hook.requests] == [ev["event_id"] for ev in events[:2]] + [
        failing] * 3 + [events[3]["event_id"]]
    assert (notifier.stats["rejected"], notifier.stats["gave_up"]) == (1, 1)
    assert offsets == end_offsets(sent)
