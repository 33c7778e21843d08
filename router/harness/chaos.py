"""`leadrouter chaos`: fault injection under steady traffic, then the verifier.

On the embedded broker with 8 partitions and 2-3 workers, drive realistic traffic (leads,
profiles, reps answering their leads) and inject faults while it flows:

  short (in `make test`):  SIGKILL a worker and restart it; add a worker (rebalance)
  full  (`make chaos`):    a worker started before the broker is up; the two above; remove a
                           worker gracefully; pause the broker (SIGSTOP 20 s, then SIGCONT)

After each fault a probe lead (fit VP, demo request) is sent: the time until its `lead.sql` and
`lead.assigned` are readable is the time to resume. When traffic stops and the workers have
caught up (and the SLA deadlines have passed), `leadrouter verify` checks the whole run.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from router.adapters.tansu_quirks import fetch_end_offsets
from router.adapters.topics import Topics
from router.domain.rules import parse_rules
from router.harness.brokers import KafkaBroker, TansuBroker, free_port, local_broker
from router.harness.traffic import TrafficGenerator
from router.harness.workers import WorkerProcess
from router.tools.verify import Report, verify

SLA_SECONDS = 15.0
SETTLE_SECONDS = 60.0
RULES = f"name: chaos\nsla:\n  high_intent_minutes: {SLA_SECONDS / 60}\n"


@dataclass
class FaultResult:
    fault: str
    started: float
    resume_sql_s: float | None = None
    resume_assigned_s: float | None = None


@dataclass
class ChaosRun:
    workdir: Path
    rate: float
    prefix: str = field(default_factory=lambda: f"chaos{uuid.uuid4().hex[:6]}.")
    faults: list[FaultResult] = field(default_factory=list)
    sent: int = 0
    output_times: list[float] = field(default_factory=list)
    probes: dict[str, FaultResult] = field(default_factory=dict)
    seen_ids: set[str] = field(default_factory=set)
    settled_after_s: float = 0.0

    @property
    def topics(self) -> Topics:
        return Topics.with_prefix(self.prefix)

    def worker(self, broker_url: str, n: int, rules: Path) -> WorkerProcess:
        return WorkerProcess(broker_url, self.workdir / f"worker-{n}.log", env={
            "LEADROUTER_TOPIC_PREFIX": self.prefix,
            "LEADROUTER_RULES": str(rules),
            "LEADROUTER_DATA_DIR": str(self.workdir / f"data-{n}"),
            "LEADROUTER_BROKER_WAIT_SECONDS": "60",
        })


async def _lag(bootstrap: str, group: str, topics: list[str]) -> int:
    tps = [TopicPartition(t, p) for t in topics for p in range(8 if "routing" not in t else 1)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # name the partitions: Tansu answers the "all partitions" form with a broken frame
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
    finally:
        await admin.close()
    ends = await fetch_end_offsets([bootstrap], tps)
    lag = 0
    for tp, end in ends.items():
        meta = committed.get(tp)
        lag += max(0, end - (meta.offset if meta is not None and meta.offset >= 0 else 0))
    return lag


async def run_chaos(full: bool, workdir: Path, rate: float = 60.0, kind: str | None = None,
                    log: Callable[[str], None] = print) -> tuple[Report, ChaosRun]:
    workdir.mkdir(parents=True, exist_ok=True)
    rules_path = workdir / "chaos-rules.yaml"
    rules_path.write_text(RULES)
    run = ChaosRun(workdir, rate)
    topics = run.topics
    port = free_port()
    broker = local_broker(kind, port=port, log_path=workdir / "broker.log")
    workers: list[WorkerProcess] = []
    start = time.monotonic()

    def stamp(text: str) -> None:
        log(f"[{time.monotonic() - start:6.1f} s] {text}")

    try:
        first = run.worker(broker.url, 1, rules_path)
        if full:
            first.start()
            stamp("worker 1 started before the broker is up")
            await asyncio.sleep(3)
            broker.start()
            stamp("broker started")
        else:
            broker.start()
            first.start()
        workers.append(first)
        await asyncio.to_thread(first.wait_ready, 120)
        stamp("worker 1 ready")
        second = run.worker(broker.url, 2, rules_path).start()
        workers.append(second)
        await asyncio.to_thread(second.wait_ready, 120)
        stamp("worker 2 ready")

        stop = asyncio.Event()
        traffic_task = asyncio.create_task(_traffic(run, broker, stop))

        async def fault(name: str, action: Callable[[], Awaitable[None]]) -> None:
            result = FaultResult(name, time.monotonic())
            run.faults.append(result)
            stamp(f"fault: {name}")
            await action()
            await _probe(run, broker, result)

        async def kill_and_restart() -> None:
            workers[1].kill()
            await asyncio.sleep(2)
            workers[1] = run.worker(broker.url, 2, rules_path).start()

        async def add_worker() -> None:
            workers.append(run.worker(broker.url, 3, rules_path).start())

        async def remove_gracefully() -> None:
            w = workers.pop()
            await asyncio.to_thread(w.stop)

        async def pause_broker() -> None:
            broker.pause()
            await asyncio.sleep(20)
            broker.resume()

        await asyncio.sleep(10)
        await fault("SIGKILL worker 2, restart it 2 s later", kill_and_restart)
        await asyncio.sleep(20)
        await fault("add worker 3 (rebalance)", add_worker)
        await asyncio.sleep(20)
        if full:
            await fault("remove worker 3 gracefully (SIGTERM)", remove_gracefully)
            await asyncio.sleep(20)
            await fault("pause the broker 20 s (SIGSTOP/SIGCONT)", pause_broker)
            await asyncio.sleep(20)
        for result in run.faults:  # wait for probes still in flight
            deadline = time.monotonic() + 120
            while result.resume_assigned_s is None and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
        stop.set()
        await traffic_task
        stamp(f"traffic stopped after {run.sent} events; waiting for the workers to catch up")
        group = f"{run.prefix}leadrouter"
        inputs = [topics.touchpoints, topics.profiles, topics.activity, topics.routing]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if await _lag(broker.bootstrap, group, inputs) == 0:
                    break
            except Exception as exc:  # keep waiting; say why
                stamp(f"lag check failed: {exc!r}")
            await asyncio.sleep(1)
        await asyncio.sleep(SLA_SECONDS + 3)  # every deadline of the run has passed
        stamp("caught up; verifying")
        rules = parse_rules(RULES, str(rules_path))
        report = await verify(broker.url, run.prefix, rules)
        # A rebalance right at the end delays the last SLA ticks: outcomes that are only late
        # settle within a few ticks; a lost one never does. Say how long it took.
        settle_deadline = time.monotonic() + SETTLE_SECONDS
        while report.violations and time.monotonic() < settle_deadline:
            await asyncio.sleep(5)
            report = await verify(broker.url, run.prefix, rules)
        run.settled_after_s = round(SETTLE_SECONDS - max(0.0, settle_deadline - time.monotonic()))
        stamp(f"verified ({len(report.violations)} violations)")
        return report, run
    finally:
        for w in workers:
            w.stop()
        broker.resume()
        broker.stop()


async def _probe(run: ChaosRun, broker: KafkaBroker | TansuBroker, result: FaultResult) -> None:
    lead = f"PROBE-{len(run.probes)}-{uuid.uuid4().hex[:4]}"
    run.probes[lead] = result
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=60_000)
    await producer.start()
    try:
        now = datetime.now(UTC).isoformat()
        await producer.send_and_wait(run.topics.profiles, orjson.dumps({
            "lead_id": lead, "updated_at": now, "seniority": "vp", "country": "US",
            "company": {"employees": 500, "industry": "saas"}}), key=lead.encode())
        await producer.send_and_wait(run.topics.touchpoints, orjson.dumps({
            "event_id": f"{lead}-demo", "lead_id": lead, "type": "demo_request",
            "occurred_at": now}), key=lead.encode())
    finally:
        await producer.stop()


async def _traffic(run: ChaosRun, broker: KafkaBroker | TansuBroker, stop: asyncio.Event) -> None:
    topics = run.topics
    traffic = TrafficGenerator(leads=2000, seed=11, bad_event_share=0.02)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5,
                                request_timeout_ms=60_000)
    consumer = AIOKafkaConsumer(topics.transitions, topics.assignments,
                                bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                fetch_max_wait_ms=100)
    await producer.start()
    await consumer.start()
    pending: set[asyncio.Task[None]] = set()
    try:
        for key, value in traffic.named_accounts():
            await producer.send_and_wait(topics.accounts, value, key=key)
        for key, value in traffic.reps(datetime.now(UTC)):
            await producer.send_and_wait(topics.reps, value, key=key)

        async def respond(delay: float, key: bytes, activity: dict[str, Any]) -> None:
            await asyncio.sleep(delay)
            if not stop.is_set():
                activity["occurred_at"] = datetime.now(UTC).isoformat()
                await producer.send(topics.activity, orjson.dumps(activity), key=key)

        async def produce() -> None:
            next_at = time.monotonic()
            while not stop.is_set():
                for kind, key, value in traffic.next_events(datetime.now(UTC)):
                    topic = topics.touchpoints if kind == "touchpoint" else topics.profiles
                    await producer.send(topic, value, key=key)
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
                        probe = run.probes.get(event["lead_id"])
                        if probe is not None and event["type"] == "lead.sql":
                            probe.resume_sql_s = received - probe.started
                        if probe is not None and event["type"] == "lead.assigned":
                            probe.resume_assigned_s = received - probe.started
                        if tp.topic == topics.assignments and event["type"] != "lead.queued" \
                                and probe is None:
                            for delay, activity in traffic.rep_response(event, SLA_SECONDS):
                                task = asyncio.create_task(respond(delay, r.key or b"",
                                                                   activity))
                                pending.add(task)
                                task.add_done_callback(pending.discard)

        await asyncio.gather(produce(), consume())
    finally:
        for task in pending:
            task.cancel()
        await producer.stop()
        await consumer.stop()


def longest_stall(times: list[float]) -> float:
    ordered = sorted(times)
    return max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)


def main(full: bool, rate: float) -> int:
    workdir = Path(".leadrouter") / f"chaos-{int(time.time())}"
    report, run = asyncio.run(run_chaos(full, workdir, rate))
    print(report.render())
    print(f"events sent: {run.sent}; longest gap between outputs:"
          f" {longest_stall(run.output_times):.1f} s; verifier settled after"
          f" {run.settled_after_s:.0f} s")
    for f in run.faults:
        print(f"  {f.fault}: resumed (probe lead.sql) after"
              f" {_fmt(f.resume_sql_s)}, lead.assigned after {_fmt(f.resume_assigned_s)}")
    print(orjson.dumps({"chaos": {
        "full": full, "sent": run.sent, "violations": len(report.violations),
        "repeats_dropped": dict(report.repeats),
        "longest_stall_s": round(longest_stall(run.output_times), 1),
        "verify_settled_after_s": run.settled_after_s,
        "faults": [{"fault": f.fault, "resume_sql_s": f.resume_sql_s,
                    "resume_assigned_s": f.resume_assigned_s} for f in run.faults],
    }}).decode())
    print(f"logs: {workdir}")
    return 1 if report.violations or any(f.resume_assigned_s is None for f in run.faults) else 0


def _fmt(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"

