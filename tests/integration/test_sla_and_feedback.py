"""Speed-to-lead SLA and the sales feedback loop on the real broker, with budgets in seconds.

A touch in time gives sla.met; no touch gives sla.warning, sla.breached and lead.reassigned;
a rejection recycles the lead and frees the rep's slot; a worker SIGKILLed while a deadline
is pending still fires that breach, once, after it restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from router.adapters.topics import Topics
from router.harness.brokers import LocalBroker
from router.harness.workers import WorkerProcess
from tests.integration.conftest import collect, new_prefix, send, start_worker

BUDGET_SECONDS = 3.0
RULES = f"""
name: sla-seconds
sla:
  high_intent_minutes: {BUDGET_SECONDS / 60}
  warning_fraction: 0.5
"""


def now() -> str:
    return datetime.now(UTC).isoformat()


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "sla-seconds.yaml"
    path.write_text(RULES)
    return path


@pytest.fixture(scope="module")
def sla_worker(broker: LocalBroker, prefix: str, rules_file: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = start_worker(broker, prefix, tmp_path_factory.mktemp("w"),
                     LEADROUTER_RULES=str(rules_file))
    yield w
    w.stop()


async def roster(producer: AIOKafkaProducer, topics: Topics, worker: WorkerProcess,
                 reps: list[dict[str, Any]]) -> None:
    for r in reps:
        await send(producer, topics.reps, r["rep_id"], r)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while worker.get("/ready")[1]["reps"] < len(reps):
        assert loop.time() < deadline, "roster not loaded"
        await asyncio.sleep(0.1)


async def make_sql(producer: AIOKafkaProducer, topics: Topics, lead: str, country: str) -> None:
    await send(producer, topics.profiles, lead, {
        "lead_id": lead, "updated_at": now(), "seniority": "vp", "country": country,
        "company": {"employees": 300, "industry": "saas"}})
    await send(producer, topics.touchpoints, lead, {
        "event_id": f"{lead}-demo", "lead_id": lead, "type": "demo_request",
        "occurred_at": now()})


def by_lead(events: list[dict[str, Any]], lead: str) -> list[tuple[str, Any]]:
    return [(e["type"], e.get("rep_id")) for e in events if e["lead_id"] == lead]


async def test_met_breached_reassigned_and_rejection_recycles(
    sla_worker: WorkerProcess, broker: LocalBroker, producer: AIOKafkaProducer,
    topics: Topics,
) -> None:
    await roster(producer, topics, sla_worker, [
        {"rep_id": "R-A", "pools": ["EMEA"]}, {"rep_id": "R-B", "pools": ["EMEA"]},
        {"rep_id": "R-J", "pools": ["APAC"], "max_open_leads": 1},
    ])
    # 1. touched in time -> sla.met
    await make_sql(producer, topics, "L-met", "DE")
    [assigned] = await collect(broker, topics.assignments,
                               until=lambda rs: any(r["lead_id"] == "L-met" for r in rs),
                               timeout=30, settle=0.1)
    await send(producer, topics.activity, "L-met", {
        "event_id": "sa-met", "lead_id": "L-met", "rep_id": assigned["rep_id"],
        "type": "first_touch", "occurred_at": now()})
    # 2. never touched -> warning, breach, reassignment to the other EMEA rep
    await make_sql(producer, topics, "L-late", "DE")
    # 3. R-J (capacity 1) holds L-j1, L-j2 waits; R-J rejects L-j1 -> recycled, L-j2 assigned
    await make_sql(producer, topics, "L-j1", "JP")
    await collect(broker, topics.assignments,
                  until=lambda rs: any(r["lead_id"] == "L-j1" for r in rs), timeout=30,
                  settle=0.1)
    await make_sql(producer, topics, "L-j2", "JP")
    await collect(broker, topics.assignments,
                  until=lambda rs: any(r["lead_id"] == "L-j2" for r in rs), timeout=30,
                  settle=0.1)
    await send(producer, topics.activity, "L-j1", {
        "event_id": "sa-rej", "lead_id": "L-j1", "rep_id": "R-J", "type": "rejected",
        "reason": "bad_timing", "comment": "budget next FY", "occurred_at": now()})

    sla = await collect(
        broker, topics.sla,
        until=lambda rs: {("L-met", "sla.met"), ("L-late", "sla.breached")}
        <= {(r["lead_id"], r["type"]) for r in rs},
        timeout=40, settle=BUDGET_SECONDS + 1)
    met = [e for e in sla if e["lead_id"] == "L-met"]
    assert [e["type"] for e in met] == ["sla.met"]
    assert 0 <= met[0]["response_seconds"] < BUDGET_SECONDS
    late = [e for e in sla if e["lead_id"] == "L-late"]
    assert [e["type"] for e in late][:2] == ["sla.warning", "sla.breached"]
    breach = late[1]
    assert breach["reassigned_to"] in ("R-A", "R-B") and breach["reassigned_to"] != (
        breach["rep_id"])

    assignments = await collect(
        broker, topics.assignments,
        until=lambda rs: any(r["type"] == "lead.reassigned" for r in rs)
        and any(r["lead_id"] == "L-j2" and r["type"] == "lead.assigned" for r in rs),
        timeout=30)
    first, again = [e for e in assignments if e["lead_id"] == "L-late"][:2]
    assert (first["type"], again["type"]) == ("lead.assigned", "lead.reassigned")
    assert again["rule"] == "reassign_after_breach"
    assert again["rep_id"] == breach["reassigned_to"] != first["rep_id"]
    assert again["event_id"] == "L-late:c1:assign:2"
    assert again["trace"][0]["skipped"] == "sla_breached"
    assert by_lead(assignments, "L-j2") == [("lead.queued", None), ("lead.assigned", "R-J")]

    transitions = await collect(
        broker, topics.transitions,
        until=lambda rs: any(r["type"] == "lead.recycled" for r in rs), timeout=30)
    [recycled] = [t for t in transitions if t["type"] == "lead.recycled"]
    assert recycled["event_id"] == "L-j1:c1:recycled"
    assert recycled["from_stage"] == "sql" and recycled["to_stage"] == "new"
    assert recycled["criteria"] == {"recycled_because": "rejected: bad_timing"}
    assert recycled["triggered_by"] == "sa-rej"


async def test_a_pending_deadline_survives_sigkill_and_fires_once(
    broker: LocalBroker, producer: AIOKafkaProducer, rules_file: Path, tmp_path: Path
) -> None:
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    worker = start_worker(broker, prefix, tmp_path, LEADROUTER_RULES=str(rules_file))
    try:
        await roster(producer, topics, worker, [{"rep_id": "R-K", "pools": ["NA"]}])
        await make_sql(producer, topics, "L-kill", "US")
        await collect(broker, topics.assignments,
                      until=lambda rs: any(r["lead_id"] == "L-kill" for r in rs),
                      timeout=30, settle=0.5)
        worker.kill()  # the deadline (3 s) passes while no worker runs
    finally:
        worker.stop()
    worker = start_worker(broker, prefix, tmp_path, LEADROUTER_RULES=str(rules_file))
    try:
        sla = await collect(
            broker, topics.sla,
            until=lambda rs: any(r["type"] == "sla.breached" for r in rs),
            timeout=40, settle=BUDGET_SECONDS + 2)
    finally:
        worker.stop()
    breaches = [e for e in sla if e["type"] == "sla.breached"]
    assert [e["event_id"] for e in breaches] == ["L-kill:c1:sla:1:breached"]
    raw = await collect(broker, topics.sla, until=lambda rs: False, timeout=1.0,
                        keep_repeats=True)
    # at-least-once: a repeat may only ever carry the same id, which consumers drop
    assert {e["event_id"] for e in raw if e["type"] == "sla.breached"} == {
        "L-kill:c1:sla:1:breached"}
    # the only rep breached: nobody else eligible, the lead stays with its holder
    assert breaches[0]["rep_id"] == "R-K" and breaches[0]["reassigned_to"] is None
    assert "stays with R-K" in breaches[0]["detail"]
