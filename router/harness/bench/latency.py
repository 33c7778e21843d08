"""`leadrouter bench-latency`: time from producing the triggering touchpoint to the `lead.sql`
and to the `lead.assigned` being readable by a consumer, one worker, at a fixed offered rate.
A benchmark, not a test.

Each sample is a distinct fit decision-maker lead whose profile was loaded beforehand; its one
`demo_request` makes it SQL at once (direct path), so every touchpoint triggers one `lead.sql`,
which the routing stage assigns to one of five reps with room for every sample.
Times are taken in this process with a monotonic clock: before `send()` and on receipt by a
plain aiokafka consumer (fetch_max_wait 100 ms, like the worker's), after a warm-up of a fifth
of the samples (at least 50) at the same rate, not counted. The reader is
read_committed by default: what a downstream consumer of an exactly-once worker must set, so
the figure includes the transaction's commit (read_uncommitted would see the outputs as soon
as they are appended, before the commit, and may see aborted ones).
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
from router.settings import bootstrap_servers


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def _measure(bootstrap: list[str], topics: Topics, samples: int, rate: float,
                   isolation: str) -> dict[str, float | str]:
    run = uuid.uuid4().hex[:6]
    # the first leads warm the path up (the broker's JIT, the worker's first transactions,
    # the reader's first fetches) and are not counted
    warmup = max(50, samples // 5)
    leads = [f"B-{run}-{i}" for i in range(warmup + samples)]
    counted = set(leads[warmup:])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(topics.transitions, topics.assignments,
                                bootstrap_servers=bootstrap,
                                auto_offset_reset="latest", fetch_max_wait_ms=100,
                                isolation_level=isolation)
    await producer.start()
    await consumer.start()
    try:
        now = datetime.now(UTC).isoformat()
        for i in range(5):
            rep_id = f"BR-{run}-{i}"
            rep = {"rep_id": rep_id, "pools": ["global"], "max_open_leads": len(leads)}
            await producer.send(topics.reps, orjson.dumps(rep), key=rep_id.encode())
        for lead in leads:
            profile = {"lead_id": lead, "updated_at": now, "seniority": "director",
                       "buying_role": "decision_maker",
                       "company": {"employees": 300, "industry": "saas"}}
            await producer.send(topics.profiles, orjson.dumps(profile), key=lead.encode())
        await producer.flush()
        await asyncio.sleep(3.0)  # let the worker fold the profiles in before timing starts
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        sent_at: dict[str, float] = {}
        latencies: dict[str, list[float]] = {"sql": [], "assigned": []}

        async def consume() -> None:
            deadline = time.monotonic() + len(leads) / rate + 30
            while len(latencies["assigned"]) < samples and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=200)
                received = time.monotonic()
                for records in batches.values():
                    for r in records:
                        lead = r.key.decode() if r.key else ""
                        start = sent_at.get(lead)
                        if start is None or lead not in counted:
                            continue
                        if b'"lead.sql"' in r.value:
                            latencies["sql"].append(received - start)
                        elif b'"lead.assigned"' in r.value:
                            latencies["assigned"].append(received - start)

        async def produce() -> None:
            interval = 1.0 / rate
            next_at = time.monotonic()
            for lead in leads:
                tp = {"event_id": f"{lead}-demo", "lead_id": lead, "type": "demo_request",
                      "occurred_at": datetime.now(UTC).isoformat()}
                sent_at[lead] = time.monotonic()
                await producer.send(topics.touchpoints, orjson.dumps(tp), key=lead.encode())
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        await asyncio.gather(consume(), produce())
    finally:
        await producer.stop()
        await consumer.stop()
    if not latencies["sql"] or not latencies["assigned"]:
        raise RuntimeError("no lead.sql or lead.assigned arrived: is a worker running?")
    out: dict[str, float | str] = {"samples": samples, "rate_per_s": rate,
                                   "reader_isolation": isolation}
    for name, values in latencies.items():
        ms = [x * 1000 for x in values]
        out[f"{name}_received"] = len(ms)
        out[f"{name}_p50_ms"] = round(statistics.median(ms), 1)
        out[f"{name}_p95_ms"] = round(_percentile(ms, 0.95), 1)
        out[f"{name}_p99_ms"] = round(_percentile(ms, 0.99), 1)
        out[f"{name}_max_ms"] = round(max(ms), 1)
    return out


def measure_local(samples: int, rate: float, isolation: str, name: str = "bench",
                  env: dict[str, str] | None = None,
                  broker_config: dict[str, str] | None = None) -> dict[str, float | str]:
    """One fresh local broker and worker (`env` for the worker), measured once."""
    with local_router(Path(".leadrouter"), name, env=env,
                      broker_config=broker_config) as (embedded, _worker):
        return asyncio.run(_measure([embedded.bootstrap], Topics.with_prefix(""), samples,
                                    rate, isolation))


def run_hops(samples: int, rate: float, isolation: str) -> int:
    """The latency run with the worker tracing, then the hop breakdown from its log."""
    from router.harness.bench.hops import breakdown, render

    name = "hops"
    log = Path(".leadrouter") / f"{name}-worker.log"
    log.unlink(missing_ok=True)  # worker logs are appended to
    try:
        result = measure_local(samples, rate, isolation, name, env={
            "LEADROUTER_TRACE": "1", "LEADROUTER_LOG_FORMAT": "json"})
    except (RuntimeError, TimeoutError) as exc:
        print(f"bench-latency: {exc} (logs in .leadrouter/)", file=sys.stderr)
        return 1
    print(f"one worker tracing, {rate:.0f} triggering touchpoints/s, reader {isolation}:"
          f" lead.sql p50 {result['sql_p50_ms']} / p99 {result['sql_p99_ms']} ms,"
          f" lead.assigned p50 {result['assigned_p50_ms']} / p99 {result['assigned_p99_ms']} ms")
    table = breakdown(log)
    print(render(table))
    print(orjson.dumps({"bench": "hops", **result, "steps": table}).decode())
    return 0


def run_latency_bench(samples: int, rate: float, broker: str | None,
                      isolation: str = "read_committed") -> int:
    topics = Topics.with_prefix("")
    if broker is not None:
        result = asyncio.run(_measure(bootstrap_servers(broker), topics, samples, rate,
                                      isolation))
        print(orjson.dumps({"bench": "touchpoint_latency", **result}).decode())
        return 0
    try:
        result = measure_local(samples, rate, isolation)
    except (RuntimeError, TimeoutError) as exc:
        print(f"bench-latency: {exc} (logs in .leadrouter/)", file=sys.stderr)
        return 1
    print(f"one worker, embedded broker, {rate:.0f} triggering touchpoints/s offered,"
          f" reader {isolation}:")
    for name in ("sql", "assigned"):
        print(f"  touchpoint -> lead.{name:<8} readable: {result[name + '_received']:.0f}"
              f"/{samples}  p50 {result[name + '_p50_ms']} ms  p95 {result[name + '_p95_ms']}"
              f" ms  p99 {result[name + '_p99_ms']} ms  max {result[name + '_max_ms']} ms")
    print(orjson.dumps({"bench": "touchpoint_latency", **result}).decode())
    return 0
