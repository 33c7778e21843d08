"""`leadrouter bench-sla`: how late `sla.breached` is published after its deadline.

Starts the embedded broker and one worker with a short high-intent budget, routes `--timers`
direct-path SQLs to a roster with room for all of them, never touches them, and measures for
every `sla.breached` the time from its `due_at` to the moment a plain consumer reads it (wall
clock on both sides; one machine). A benchmark, not a test: the figures go in the issue note.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from router.adapters.topics import Topics
from router.harness.workers import local_router


async def _measure(bootstrap: str, timers: int, budget_seconds: float, spread_seconds: float
                   ) -> dict[str, float]:
    topics = Topics.with_prefix("")
    run = uuid.uuid4().hex[:6]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    consumer = AIOKafkaConsumer(topics.sla, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100)
    await producer.start()
    await consumer.start()
    try:
        for i in range(5):
            rep_id = f"SR-{run}-{i}"
            rep = {"rep_id": rep_id, "pools": ["global"], "max_open_leads": timers}
            await producer.send(topics.reps, orjson.dumps(rep), key=rep_id.encode())
        leads = [f"S-{run}-{i}" for i in range(timers)]
        for lead in leads:
            profile = {"lead_id": lead, "updated_at": datetime.now(UTC).isoformat(),
                       "seniority": "vp", "company": {"employees": 300, "industry": "saas"}}
            await producer.send(topics.profiles, orjson.dumps(profile), key=lead.encode())
        await producer.flush()
        await asyncio.sleep(2.0)
        for lead in leads:  # deadlines spread over `spread_seconds`
            tp = {"event_id": f"{lead}-demo", "lead_id": lead, "type": "demo_request",
                  "occurred_at": datetime.now(UTC).isoformat()}
            await producer.send(topics.touchpoints, orjson.dumps(tp), key=lead.encode())
            await asyncio.sleep(spread_seconds / timers)
        await producer.flush()
        delays: dict[str, float] = {}
        deadline = time.monotonic() + budget_seconds + spread_seconds + 60
        while len(delays) < timers and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            received = time.time()
            for records in batches.values():
                for r in records:
                    event = orjson.loads(r.value)
                    if event["type"] == "sla.breached" and event["lead_id"].startswith(
                        f"S-{run}-"
                    ):
                        due = datetime.fromisoformat(event["due_at"]).timestamp()
                        delays.setdefault(event["event_id"], received - due)
    finally:
        await producer.stop()
        await consumer.stop()
    if not delays:
        raise RuntimeError("no sla.breached arrived")
    ms = sorted(d * 1000 for d in delays.values())
    return {
        "timers": timers,
        "breaches_received": len(ms),
        "delay_p50_ms": round(statistics.median(ms), 1),
        "delay_p99_ms": round(ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))], 1),
        "delay_max_ms": round(max(ms), 1),
        "delay_min_ms": round(min(ms), 1),
    }


def run_sla_bench(timers: int, budget_seconds: float, spread_seconds: float) -> int:
    workdir = Path(".leadrouter")
    workdir.mkdir(exist_ok=True)
    rules = workdir / "bench-sla-rules.yaml"
    rules.write_text(f"name: bench-sla\nsla:\n  high_intent_minutes: {budget_seconds / 60}\n")
    try:
        with local_router(workdir, "bench-sla", env={"LEADROUTER_RULES": str(rules)}) as (
            broker, _worker,
        ):
            result = asyncio.run(_measure(broker.bootstrap, timers, budget_seconds,
                                          spread_seconds))
    except (RuntimeError, TimeoutError) as exc:
        print(f"bench-sla: {exc} (logs in .leadrouter/)", file=sys.stderr)
        return 1
    print(f"deadline -> sla.breached readable, {result['breaches_received']:.0f}/{timers}"
          f" timers: p50 {result['delay_p50_ms']} ms, p99 {result['delay_p99_ms']} ms,"
          f" max {result['delay_max_ms']} ms (min {result['delay_min_ms']} ms)")
    print(orjson.dumps({"bench": "sla_breach_delay", **result}).decode())
    return 0
