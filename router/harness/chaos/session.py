"""What every chaos run shares: its topics and workers, steady traffic, probe leads, and the
wait for the workers to catch up before the verifier judges the run.

Everything here talks to a broker on loopback only and is bounded in time: the traffic stops on
an event, every wait has a deadline, the workers are the caller's to stop.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from router.adapters.tansu_quirks import fetch_end_offsets
from router.adapters.topics import Topics
from router.domain.rules import parse_rules
from router.harness.brokers import KafkaBroker, TansuBroker
from router.harness.workers import WorkerProcess
from router.tools.traffic_model import TrafficGenerator
from router.tools.verify import Report, verify

SLA_SECONDS = 15.0
RULES = f"name: chaos\nsla:\n  high_intent_minutes: {SLA_SECONDS / 60}\n"
Broker = KafkaBroker | TansuBroker
Log = Callable[[str], None]


@dataclass
class FaultResult:
    fault: str
    started: float
    resume_sql_s: float | None = None
    resume_assigned_s: float | None = None


@dataclass
class ChaosRun:
    """One run's topics (a fresh prefix, so runs can share a broker), workers' settings and
    what was observed while it ran."""

    workdir: Path
    rate: float
    seed: int = 11
    leads: int = 2000
    replication_factor: int = 1
    trace: bool = False  # LEADROUTER_TRACE=1 and JSON logs the trace reader can parse
    worker_src: Path | None = None  # run the workers from this source tree (before/after runs)
    prefix: str = field(default_factory=lambda: f"chaos{uuid.uuid4().hex[:6]}.")
    faults: list[FaultResult] = field(default_factory=list)
    sent: int = 0
    send_failures: int = 0  # traffic the producer gave up on (a broker fault): never an input
    output_times: list[float] = field(default_factory=list)
    probes: dict[str, FaultResult] = field(default_factory=dict)
    seen_ids: set[str] = field(default_factory=set)
    settled_after_s: float = 0.0
    caught_up: bool = False
    forensics: str = ""  # with `trace`: the lost leads' input records the workers never got
    unreached: int | None = None  # with `trace`: input records no traced batch reached

    @property
    def topics(self) -> Topics:
        return Topics.with_prefix(self.prefix)

    @property
    def rules_path(self) -> Path:
        return self.workdir / "chaos-rules.yaml"

    def worker_log(self, n: int) -> Path:
        return self.workdir / f"worker-{n}.log"

    def worker(self, broker_url: str, n: int) -> WorkerProcess:
        """Worker slot `n`; a restart appends to the same log and keeps the same data dir."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.rules_path.exists():
            self.rules_path.write_text(RULES)
        env = {
            "LEADROUTER_TOPIC_PREFIX": self.prefix,
            "LEADROUTER_RULES": str(self.rules_path),
            "LEADROUTER_DATA_DIR": str(self.workdir / f"data-{n}"),
            "LEADROUTER_BROKER_WAIT_SECONDS": "60",
            "LEADROUTER_REPLICATION_FACTOR": str(self.replication_factor),
        }
        if self.trace:
            env |= {"LEADROUTER_TRACE": "1", "LEADROUTER_LOG_FORMAT": "json"}
        if self.worker_src is not None:
            # ahead of the editable install; PYTHONSAFEPATH: `-m` must not put the cwd first
            env |= {"PYTHONPATH": str(self.worker_src.resolve()), "PYTHONSAFEPATH": "1"}
        return WorkerProcess(broker_url, self.worker_log(n), env=env)


def stamper(log: Log) -> Callable[[str], None]:
    start = time.monotonic()

    def stamp(text: str) -> None:
        log(f"[{time.monotonic() - start:6.1f} s] {text}")

    return stamp


async def lag(bootstrap: str, group: str, topics: list[str]) -> int:
    """Records of `topics` not yet committed by `group` (0: the workers have caught up)."""
    tps = [TopicPartition(t, p) for t in topics for p in range(8 if "routing" not in t else 1)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # name the partitions: Tansu answers the "all partitions" form with a broken frame
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
    finally:
        await admin.close()
    ends = await fetch_end_offsets(bootstrap.split(","), tps)
    total = 0
    for tp, end in ends.items():
        meta = committed.get(tp)
        total += max(0, end - (meta.offset if meta is not None and meta.offset >= 0 else 0))
    return total


async def settle_and_verify(run: ChaosRun, broker: Broker, stamp: Log, *, catch_up_s: float,
                            settle_s: float, strict: bool = False) -> Report:
    """Wait (bounded) until the group has committed every input record, then until every SLA
    deadline of the run has passed, then verify; re-verify for up to `settle_s` while there
    are violations (an outcome a last rebalance only delayed settles; a lost one never does).
    A partition that stopped committing is not waited on forever: the verifier then reports
    what it cost."""
    topics = run.topics
    group = f"{run.prefix}leadrouter"
    inputs = [topics.touchpoints, topics.profiles, topics.activity, topics.routing]
    deadline = time.monotonic() + catch_up_s
    remaining = -1
    while time.monotonic() < deadline:
        try:
            remaining = await lag(broker.bootstrap, group, inputs)
            if remaining == 0:
                run.caught_up = True
                break
        except Exception as exc:  # keep waiting; say why
            stamp(f"lag check failed: {exc!r}")
        await asyncio.sleep(1)
    if not run.caught_up:
        stamp(f"not caught up after {catch_up_s:.0f} s ({remaining} records uncommitted)")
    await asyncio.sleep(SLA_SECONDS + 3)  # every deadline of the run has passed
    stamp("verifying")
    rules = parse_rules(RULES, str(run.rules_path))
    report = await verify(broker.url, run.prefix, rules, strict)
    settle_deadline = time.monotonic() + settle_s
    while report.violations and time.monotonic() < settle_deadline:
        await asyncio.sleep(5)
        report = await verify(broker.url, run.prefix, rules, strict)
    run.settled_after_s = round(settle_s - max(0.0, settle_deadline - time.monotonic()))
    stamp(f"verified: {len(report.violations)} violations, {len(report.lost)} lost outputs")
    if run.trace:
        from router.harness.chaos.traces import explain_losses  # needs the broker still up

        try:
            run.forensics = await explain_losses(report, run, broker.bootstrap, strict)
        except Exception as exc:  # forensics must not hide the verdict
            run.forensics = f"trace forensics failed: {exc!r}"
    return report


async def wait_for_probes(run: ChaosRun, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    for result in run.faults:
        while result.resume_assigned_s is None and time.monotonic() < deadline:
            await asyncio.sleep(0.5)


async def probe(run: ChaosRun, broker: Broker, result: FaultResult) -> None:
    """A fit VP asking for a demo: its lead.sql and lead.assigned time the resume."""
    lead = f"PROBE-{len(run.probes)}-{uuid.uuid4().hex[:4]}"
    run.probes[lead] = result
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=60_000,
                                acks="all")
    await producer.start()
    try:
        now = datetime.now(UTC).isoformat()
        await send_retrying(producer, run.topics.profiles, lead, orjson.dumps({
            "lead_id": lead, "updated_at": now, "seniority": "vp", "country": "US",
            "company": {"employees": 500, "industry": "saas"}}))
        await send_retrying(producer, run.topics.touchpoints, lead, orjson.dumps({
            "event_id": f"{lead}-demo", "lead_id": lead, "type": "demo_request",
            "occurred_at": now}))
    finally:
        await producer.stop()


async def send_retrying(producer: AIOKafkaProducer, topic: str, key: str, value: bytes,
                        within: float = 120.0) -> None:
    """The probe is sent during a broker fault: aiokafka gives up on a batch whose leader is
    a stopped node (NodeNotReadyError) instead of waiting for the new leader, so try again
    until the cluster takes it (bounded), as a real producer's caller would."""
    deadline = time.monotonic() + within
    while True:
        try:
            await producer.send_and_wait(topic, value, key=key.encode())
            return
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)


async def traffic(run: ChaosRun, broker: Broker, stop: asyncio.Event) -> None:
    """Steady leads and profiles at `run.rate` (acks=all), and reps answering their leads,
    until `stop` is set."""
    topics = run.topics
    generator = TrafficGenerator(leads=run.leads, seed=run.seed, bad_event_share=0.02)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, acks="all",
                                request_timeout_ms=60_000)
    consumer = AIOKafkaConsumer(topics.transitions, topics.assignments,
                                bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                fetch_max_wait_ms=100)
    await producer.start()
    await consumer.start()
    pending: set[asyncio.Task[None]] = set()
    try:
        for key, value in generator.named_accounts():
            await producer.send_and_wait(topics.accounts, value, key=key)
        for key, value in generator.reps(datetime.now(UTC)):
            await producer.send_and_wait(topics.reps, value, key=key)

        def count_failure(sent: asyncio.Future[Any]) -> None:
            if not sent.cancelled() and sent.exception() is not None:
                run.send_failures += 1

        async def respond(delay: float, key: bytes, activity: dict[str, Any]) -> None:
            await asyncio.sleep(delay)
            if not stop.is_set():
                activity["occurred_at"] = datetime.now(UTC).isoformat()
                sent = await producer.send(topics.activity, orjson.dumps(activity), key=key)
                sent.add_done_callback(count_failure)

        async def produce() -> None:
            next_at = time.monotonic()
            while not stop.is_set():
                for kind, key, value in generator.next_events(datetime.now(UTC)):
                    topic = topics.touchpoints if kind == "touchpoint" else topics.profiles
                    sent = await producer.send(topic, value, key=key)
                    sent.add_done_callback(count_failure)
                    run.sent += 1
                next_at += 1.0 / run.rate
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        async def consume() -> None:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=300)
                received = time.monotonic()
                for tp, records in batches.items():
                    for r in records:
                        event = orjson.loads(r.value)
                        if event["event_id"] in run.seen_ids:
                            continue
                        run.seen_ids.add(event["event_id"])
                        run.output_times.append(received)
                        result = run.probes.get(event["lead_id"])
                        if result is not None and event["type"] == "lead.sql":
                            result.resume_sql_s = received - result.started
                        if result is not None and event["type"] == "lead.assigned":
                            result.resume_assigned_s = received - result.started
                        if tp.topic == topics.assignments and event["type"] != "lead.queued" \
                                and result is None:
                            for delay, activity in generator.rep_response(event, SLA_SECONDS):
                                task = asyncio.create_task(respond(delay, r.key or b"",
                                                                   activity))
                                pending.add(task)
                                task.add_done_callback(pending.discard)

        await asyncio.gather(produce(), consume())
        await producer.flush()
    finally:
        for task in pending:
            task.cancel()
        await producer.stop()
        await consumer.stop()


def longest_stall(times: list[float]) -> float:
    ordered = sorted(times)
    return max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)


def fmt_seconds(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"
