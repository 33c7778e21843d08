"""`leadrouter demo`: a local broker (Apache Kafka by default) + one worker + synthetic traffic,
shown live.

`--broker URL` runs the same worker and traffic against a broker that is already running and
leaves it running (the topics stay for `leadrouter report`, `simulate` and a hand check); the
worker then keeps its state in a fresh temporary folder, since a folder restored from another
broker's changelog would not match this one.

Prints a small panel every two seconds: events sent, leads by stage, SQLs by path, dead
letters, and the latest SQLs with why they qualified. Stops on Ctrl-C or after --duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from router.adapters.topics import Topics
from router.harness.brokers import BrokerError, KafkaBroker, TansuBroker, describe, local_broker
from router.harness.workers import WorkerProcess
from router.logs import mask_name
from router.settings import Settings, bootstrap_servers
from router.tools.roster import apply_roster, load_roster
from router.tools.traffic_model import TrafficGenerator

PANEL_SECONDS = 2.0
DEMO_ROSTER = str(resources.files("router") / "harness/demo_roster.yaml")


def _why(event: dict[str, Any]) -> str:
    c = event["criteria"]
    h = event.get("handover") or {}
    profile = h.get("profile") or {}
    company = profile.get("company") or {}
    reasons = []
    if event["path"] == "direct":
        reasons.append(f"talk-to-sales ({c['intent']['talk_to_sales']})")
    elif event["path"] == "abm":
        reasons.append(f"named account {c['fit']['named_account']}")
        if c["intent"]["talk_to_sales"]:
            reasons.append("talk-to-sales")
        else:
            reasons.append(f"{c['intent']['pricing_views_within_pair_window']} pricing views")
    else:
        reasons.append(f"{c['engagement']['touchpoints_in_window']} touchpoints")
        if c["intent"]["talk_to_sales"]:
            reasons.append("talk-to-sales")
        else:
            reasons.append(f"{c['intent']['pricing_views_within_pair_window']} pricing views")
    who = f"{mask_name(profile.get('name'))} {profile.get('title', '?')}"
    org = f"{company.get('name', '?')} ({company.get('industry', '?')}, {company.get('employees')})"
    points = ", ".join(h.get("talking_points", [])[:3])
    return (
        f"{event['lead_id']:<8} {event['path']:<8} score {event['score']:>3}"
        f" {h.get('sla_class', '?'):<11} | {', '.join(reasons)} | {who} @ {org}"
        + (f" | talk about: {points}" if points else "")
    )


def _assignment_line(event: dict[str, Any]) -> str:
    due = event["sla"]["due_at"][11:19]
    skipped = [f"{t['rep_id']} {t['skipped']}" for t in event["trace"]
               if t.get("rep_id") and t.get("skipped")]
    if event["type"] == "lead.queued":
        return (f"QUEUED   {event['lead_id']:<8} in {event['pool']}: nobody eligible"
                f" ({', '.join(skipped) or 'no reps'}); SLA {event['sla']['class']} due {due}Z")
    label = "REASSIGN" if event["type"] == "lead.reassigned" else "ASSIGNED"
    return (f"{label} {event['lead_id']:<8} -> {event['rep_id']} ({event['pool']},"
            f" {event['rule']}); SLA {event['sla']['class']} due {due}Z"
            + (f"; skipped {', '.join(skipped)}" if skipped else ""))


class Dashboard:
    def __init__(self) -> None:
        self.stage: dict[str, str] = {}
        self.sql_paths: Counter[str] = Counter()
        self.dead: Counter[str] = Counter()
        self.fresh: deque[str] = deque()  # lines to print once, at the next panel
        self.seen: set[str] = set()
        self.sent = 0
        self.first_sql_at: float | None = None
        self.rules_used: Counter[str] = Counter()
        self.sla: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        self.queued: set[str] = set()
        self.activity: Counter[str] = Counter()

    def on_sla(self, event: dict[str, Any]) -> None:
        if event["event_id"] in self.seen:
            return
        self.seen.add(event["event_id"])
        kind = event["type"].removeprefix("sla.")
        self.sla[kind] += 1
        if kind == "breached":
            self.fresh.append(f"BREACHED {event['lead_id']:<8} {event['rep_id'] or 'queue'}"
                              f" ({event['sla_class']}, due {event['due_at'][11:19]}Z):"
                              f" {event.get('detail') or ''}")

    def on_transition_recycled(self, event: dict[str, Any]) -> None:
        because = event["criteria"].get("recycled_because", "")
        self.rejections[because.partition(": ")[2] or because] += 1
        self.fresh.append(f"RECYCLED {event['lead_id']:<8} back to nurture ({because})")

    def on_assignment(self, event: dict[str, Any]) -> bool:
        """True for a first-seen assignment (the caller may simulate the rep's response)."""
        if event["event_id"] in self.seen:
            return False
        self.seen.add(event["event_id"])
        self.fresh.append(_assignment_line(event))
        if event["type"] == "lead.queued":
            self.queued.add(event["lead_id"])
            return False
        self.queued.discard(event["lead_id"])
        self.rules_used[event["rule"]] += 1
        return True

    def on_transition(self, event: dict[str, Any]) -> None:
        if event["event_id"] in self.seen:
            return  # at-least-once: drop repeats by event_id
        self.seen.add(event["event_id"])
        self.stage[event["lead_id"]] = event["to_stage"]
        if event["type"] == "lead.recycled":
            self.on_transition_recycled(event)
        if event["type"] == "lead.sql":
            self.sql_paths[event["path"]] += 1
            self.fresh.append("SQL      " + _why(event))
            if self.first_sql_at is None:
                self.first_sql_at = time.monotonic()

    def render(self, elapsed: float, total_leads: int) -> str:
        stages = Counter(self.stage.values())
        lines = [f"  {line}" for line in self.fresh]
        self.fresh.clear()
        lines += [
            f"--- leadrouter demo, {elapsed:5.0f} s --- events sent {self.sent}"
            f" | leads {total_leads}: new/nurture {total_leads - len(self.stage)},"
            f" MQL {stages.get('mql', 0)}, SQL {stages.get('sql', 0)}"
            f" | SQL by path: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.sql_paths.items())) or "none yet")
            + " | assigned: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.rules_used.items())) or "none yet")
            + f" | queued now {len(self.queued)}"
            + (f" | reps answered: {', '.join(f'{k} {v}' for k, v in self.activity.items())}"
               if self.activity else "")
            + (f" | SLA: {', '.join(f'{k} {v}' for k, v in sorted(self.sla.items()))}"
               if self.sla else "")
            + (f" | recycled: {', '.join(f'{k} {v}' for k, v in self.rejections.most_common())}"
               if self.rejections else "")
            + f" | dead letters {sum(self.dead.values())}"
            + (f" ({', '.join(f'{k} {v}' for k, v in self.dead.most_common())})"
               if self.dead else ""),
        ]
        return "\n".join(lines)


async def _run(broker_url: str, duration: float | None, rate: float, leads: int,
               seed: int, stop: asyncio.Event) -> int:
    bootstrap = bootstrap_servers(broker_url)
    topics = Topics.with_prefix("")
    traffic = TrafficGenerator(leads=leads, seed=seed)
    board = Dashboard()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    consumer = AIOKafkaConsumer(
        topics.transitions,
        topics.assignments,
        topics.sla,
        topics.deadletter,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    await producer.start()
    await consumer.start()
    started = time.monotonic()
    try:
        # the roster as code, through the same module as `leadrouter roster apply`
        await apply_roster(Settings(broker=broker_url), load_roster(DEMO_ROSTER), dry_run=False)
        responses: set[asyncio.Task[None]] = set()

        async def respond_later(delay: float, key: bytes, activity: dict[str, Any]) -> None:
            await asyncio.sleep(delay)
            if not stop.is_set():
                activity["occurred_at"] = datetime.now(UTC).isoformat()
                await producer.send(topics.activity, orjson.dumps(activity), key=key)
                board.activity[activity["type"]] += 1

        async def produce() -> None:
            interval = 1.0 / rate
            next_at = time.monotonic()
            while not stop.is_set():
                for kind, key, value in traffic.next_events(datetime.now(UTC)):
                    topic = topics.touchpoints if kind == "touchpoint" else topics.profiles
                    await producer.send(topic, value, key=key)
                    board.sent += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        async def consume() -> None:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=300)
                for tp, records in batches.items():
                    for r in records:
                        value = orjson.loads(r.value)
                        if tp.topic == topics.deadletter:
                            board.dead[value["reason"]] += 1
                        elif tp.topic == topics.assignments:
                            if board.on_assignment(value):
                                due = datetime.fromisoformat(value["sla"]["due_at"])
                                budget = max(5.0, (due - datetime.now(UTC)).total_seconds())
                                for delay, activity in traffic.rep_response(value, budget):
                                    task = asyncio.create_task(
                                        respond_later(delay, r.key, activity))
                                    responses.add(task)
                                    task.add_done_callback(responses.discard)
                        elif tp.topic == topics.sla:
                            board.on_sla(value)
                        else:
                            board.on_transition(value)

        async def show() -> None:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), PANEL_SECONDS)
                print(board.render(time.monotonic() - started, leads), flush=True)
                if duration is not None and time.monotonic() - started >= duration:
                    stop.set()

        await asyncio.gather(produce(), consume(), show())
    finally:
        await producer.stop()
        await consumer.stop()
    return 0 if board.first_sql_at is not None else 1


def run_demo(duration: float | None, rate: float, leads: int, web_port: int, seed: int,
             kind: str | None = None, broker_url: str | None = None) -> int:
    workdir = Path(".leadrouter")
    workdir.mkdir(exist_ok=True)
    broker: KafkaBroker | TansuBroker | None = None
    data_dir = workdir / "data"
    if broker_url is None:
        try:
            broker = local_broker(kind, log_path=workdir / "demo-broker.log")
            print(f"starting the local {describe(broker)} ...", flush=True)
            broker.start()
        except BrokerError as exc:
            print(f"leadrouter demo: {exc}", file=sys.stderr)
            return 2
        broker_url = broker.url
        print(f"{describe(broker)} on {broker_url}", flush=True)
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="demo-data-", dir=workdir))
        print(f"using the running broker {broker_url} (left running at the end)", flush=True)
    url = broker_url
    worker = WorkerProcess(
        url,
        workdir / "demo-worker.log",
        web_port=web_port,
        env={"LEADROUTER_DATA_DIR": str(data_dir),
             "LEADROUTER_RULES": str(resources.files("router") / "harness/demo_rules.yaml")},
    )
    try:
        worker.start()
        print(f"worker starting (log {worker.log_path}); waiting until /ready ...", flush=True)
        worker.wait_ready(90)
        print(
            f"worker ready: {worker.base_url}/ready, {worker.base_url}/metrics."
            f" Sending ~{rate:.0f} events/s for {leads} synthetic leads. Ctrl-C to stop.\n"
            "Each new SQL is printed once (lead, path, score, SLA class | why | who | hooks),"
            " then its routing: ASSIGNED to a rep with the rule, or QUEUED with who was"
            " skipped. Demo rules: high-intent SLA 30 s (not 5 min), so breaches show live."
            " Reps touch most leads in time, some late or never; then accept, reject with a"
            " reason, or release (recycled back to nurture).",
            flush=True,
        )

        async def main() -> int:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            return await _run(url, duration, rate, leads, seed, stop)

        code = asyncio.run(main())
        if code != 0:
            print("no SQL was seen during the demo; see the worker log", file=sys.stderr)
        return code
    except (RuntimeError, TimeoutError) as exc:
        print(f"leadrouter demo: {exc}", file=sys.stderr)
        print(worker.log_tail(), file=sys.stderr)
        return 1
    finally:
        print("stopping worker" + (" and broker" if broker is not None else "") + " ...",
              flush=True)
        worker.stop()
        if broker is not None:
            broker.stop()
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
