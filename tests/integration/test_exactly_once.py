"""Exactly-once on the real broker (Apache Kafka), through SIGKILLs of both workers.

Two workers share 8 lead partitions and the routing partition; under steady traffic each is
SIGKILLed in turn (so both the worker that publishes a lead's SQL and the worker that owns the
routing partition die, at random points between the two hops) and restarted a few seconds
later. Afterwards a read_committed reader must see, for every tracked lead, its lead.sql and a
lead.assigned or lead.queued, and no event id twice on any output topic: not "repeats
dropped", none at all (issue 12's invariant and issue 14's strict verifier).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from router.adapters.topics import Topics
from router.harness.brokers import LocalBroker
from router.harness.workers import WorkerProcess
from router.service.routing_stage import APPLIED
from tests.integration.builders import rep, wait_ready_with_roster
from tests.integration.conftest import new_prefix, send, start_worker

NOW = datetime.now(UTC).replace(microsecond=0)
TRACKED = [f"L-eos{i:03d}" for i in range(120)]
BACKGROUND = [f"L-bg{i:03d}" for i in range(200)]
REPS = [f"R-{i}" for i in range(6)]
TRAFFIC_SECONDS = 24.0
# enough that every kill lands in the middle of batches (a few hundred events a second)
BACKGROUND_RECORDS = 30_000
CHUNK = 100
INVALID_EVERY = 5
ENV = {"LEADROUTER_SESSION_TIMEOUT_SECONDS": "6"}


def profile(lead: str) -> dict[str, Any]:
    return {"lead_id": lead, "updated_at": NOW.isoformat(), "seniority": "vp",
            "country": "DE", "language": "de",
            "company": {"employees": 400, "industry": "software"}}


def touch(lead: str, kind: str, n: int) -> dict[str, Any]:
    return {"event_id": f"{lead}-{kind}-{n}", "lead_id": lead, "type": kind,
            "occurred_at": NOW.isoformat()}


def traffic(seed: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(topic kind, key, value): each tracked lead's profile and demo request in random
    order among background touchpoints of unprofiled leads, every 5th of them invalid."""
    rng = random.Random(seed)
    out: list[tuple[str, str, dict[str, Any]]] = []
    for lead in TRACKED:
        out.append(("profiles", lead, profile(lead)))
        out.append(("touchpoints", lead, touch(lead, "demo_request", 0)))
    for n in range(BACKGROUND_RECORDS):
        lead = rng.choice(BACKGROUND)
        value = touch(lead, "email_open", n)
        if n % INVALID_EVERY == 0:  # refused: a dead letter, an output of every batch
            del value["occurred_at"]
        out.append(("touchpoints", lead, value))
    rng.shuffle(out)
    # each lead's profile before its demo request (interleaved with everything else)
    where = {(kind, key): i for i, (kind, key, _v) in enumerate(out) if key in TRACKED}
    for lead in TRACKED:
        p, d = where[("profiles", lead)], where[("touchpoints", lead)]
        if d < p:
            out[p], out[d] = out[d], out[p]
    return out


async def read_committed(broker: LocalBroker, topic: str, isolation: str = "read_committed"
                         ) -> list[dict[str, Any]]:
    """Everything on `topic` as a read_committed consumer sees it, repeats kept."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                isolation_level=isolation, fetch_max_wait_ms=100)
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        parts = consumer.assignment()
        while not parts:
            await consumer.getmany(timeout_ms=100)
            parts = consumer.assignment()
        ends = await consumer.end_offsets(list(parts))  # read_committed: the stable ends
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                out.extend(orjson.loads(r.value) for r in records)
            positions = {tp: await consumer.position(tp) for tp in parts}
            if all(positions[tp] >= ends[tp] for tp in parts) and not batches:
                return out
    finally:
        await consumer.stop()


async def wait_routed(broker: LocalBroker, topics: Topics, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    missing: set[str] = set(TRACKED)
    while time.monotonic() < deadline:
        events = await read_committed(broker, topics.assignments)
        missing = set(TRACKED) - {e["lead_id"] for e in events}
        if not missing:
            return
        await asyncio.sleep(2)
    raise AssertionError(f"{len(missing)} SQLs never routed, e.g. {sorted(missing)[:5]}")


# one transactional producer per worker fenced by KIP-447 (the default), or one per task
SCOPE_ENV = {"per_task": {"LEADROUTER_TXN_TUNING": "worker_transactions=0"}, "per_worker": {}}


@pytest.mark.parametrize("scope", sorted(SCOPE_ENV))
async def test_exactly_once_through_sigkills_of_both_workers(
    broker: LocalBroker, producer: AIOKafkaProducer, tmp_path: Path, scope: str
) -> None:
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    env = {**ENV, **SCOPE_ENV[scope]}
    workers = [start_worker(broker, prefix, tmp_path / "a", **env),
               start_worker(broker, prefix, tmp_path / "b", **env)]
    kills = 0
    try:
        for r in REPS:
            await send(producer, topics.reps, r, {**rep(r), "max_open_leads": 15})
        await wait_ready_with_roster(workers, len(REPS))
        bodies = [w.get("/ready")[1] for w in workers]
        assert {b["processing_guarantee"] for b in bodies} == {"exactly_once"}
        for w in workers:  # the scope under test is the one running
            assert re.search(rf'transactions["=: ]+{scope}\b', w.log_path.read_text())

        records = traffic(seed=14)
        pace = TRAFFIC_SECONDS * CHUNK / len(records)

        async def produce() -> None:
            for start in range(0, len(records), CHUNK):
                for kind, key, value in records[start:start + CHUNK]:
                    topic = topics.profiles if kind == "profiles" else topics.touchpoints
                    await producer.send(topic, orjson.dumps(value), key=key.encode())
                await asyncio.sleep(pace)
            await producer.flush()

        async def kill_loop() -> None:
            nonlocal kills
            rng = random.Random(7)
            await asyncio.sleep(3)
            for n in range(4):  # each worker twice, at random points
                victim = workers[n % 2]
                await asyncio.sleep(rng.uniform(0.5, 2.5))
                victim.kill()
                kills += 1
                await asyncio.sleep(rng.uniform(2.0, 3.5))
                replacement = WorkerProcess(broker.url, tmp_path / f"w{n}.log",
                                            env={**victim.env}).start()
                workers[n % 2] = replacement

        await asyncio.gather(produce(), kill_loop())
        await wait_routed(broker, topics, timeout=150)
        await asyncio.sleep(3)  # anything late (a repeat) would show now

        transitions = await read_committed(broker, topics.transitions)
        assignments = await read_committed(broker, topics.assignments)
        letters = await read_committed(broker, topics.deadletter)
        routes = [r for r in await read_committed(broker, topics.routing)
                  if r.get("kind") == "route"]
        # what a reader that does not set read_committed sees too: aborted transactions
        # (the batches in flight at each kill) as repeats
        uncommitted = await read_committed(broker, topics.deadletter, "read_uncommitted")
        print(f"dead letters: {len(letters)} committed, {len(uncommitted) - len(letters)}"
              " more in aborted transactions")
    finally:
        for w in workers:
            w.stop()
    assert kills == 4
    for name, events in (("transitions", transitions), ("assignments", assignments)):
        repeated = {k: n for k, n in Counter(e["event_id"] for e in events).items() if n > 1}
        assert not repeated, f"{name}: event ids seen more than once: {repeated}"
    sqls = Counter(e["lead_id"] for e in transitions if e["type"] == "lead.sql")
    assert set(TRACKED) <= set(sqls), sorted(set(TRACKED) - set(sqls))[:5]
    assert all(sqls[lead] == 1 for lead in TRACKED)
    outcomes = Counter(e["lead_id"] for e in assignments
                       if e["type"] in ("lead.assigned", "lead.queued"))
    assert all(outcomes[lead] == 1 for lead in TRACKED), {
        lead: outcomes[lead] for lead in TRACKED if outcomes[lead] != 1}
    # every refused record dead-lettered exactly once, and nothing else (no internal errors)
    coordinates = Counter((x["source_topic"], x["partition"], x["offset"]) for x in letters)
    assert all(n == 1 for n in coordinates.values()), [
        c for c, n in coordinates.items() if n > 1][:5]
    assert len(coordinates) == BACKGROUND_RECORDS // INVALID_EVERY
    assert {x["reason"] for x in letters} == {"missing_field"}
    # one worker transaction: the routing partition's owner routes its own leads' SQLs in
    # the transaction that publishes them (processor._direct), through the kills too
    applied = sum(1 for r in routes if r.get(APPLIED) is True)
    print(f"route requests: {len(routes)}, {applied} applied in the publishing transaction")
    assert (applied > 0) == (scope == "per_worker")
    per_rep = Counter(e["rep_id"] for e in assignments if e["type"] == "lead.assigned")
    assert all(n <= 15 for n in per_rep.values()), per_rep  # capacity held
