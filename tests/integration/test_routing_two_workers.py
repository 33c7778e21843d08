"""Two workers in one group, 8 partitions: a burst of SQLs for one pool, spread over many lead
partitions, still respects capacity and round-robin, and every SQL gets exactly one outcome."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from router.adapters.topics import Topics
from router.harness.brokers import LocalBroker
from tests.integration.builders import REP_CAPACITY, rep, wait_ready_with_roster
from tests.integration.conftest import collect, new_prefix, send, start_worker

NOW = datetime.now(UTC).replace(microsecond=0)
REPS = ["R-A", "R-B", "R-C", "R-D"]
CAPACITY = REP_CAPACITY  # rep()'s max_open_leads
LEADS = [f"L-burst{i:02d}" for i in range(30)]


async def test_burst_for_one_pool_on_two_workers(
    broker: LocalBroker, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    first = start_worker(broker, prefix, tmp_path)
    second = start_worker(broker, prefix, tmp_path)
    workers = [first, second]
    try:
        for r in REPS:
            await send(producer, topics.reps, r, rep(r))
        # an out-of-office rep and an inactive rep in the same pool: never chosen
        await send(producer, topics.reps, "R-E", rep("R-E", out_of_office=[
            {"start": (NOW - timedelta(days=1)).isoformat(),
             "end": (NOW + timedelta(days=3)).isoformat()}]))
        await send(producer, topics.reps, "R-F", rep("R-F", active=False))
        await wait_ready_with_roster(workers, 6)
        # both workers own partitions of the lead topics (the group really is split)
        assigned = [w.get("/ready")[1]["partitions_assigned"] for w in workers]
        assert all(n > 0 for n in assigned), assigned

        for lead in LEADS:
            await send(producer, topics.profiles, lead, {
                "lead_id": lead, "updated_at": NOW.isoformat(), "seniority": "vp",
                "country": "DE", "language": "de",
                "company": {"employees": 400, "industry": "software"}})
        for lead in LEADS:
            await send(producer, topics.touchpoints, lead, {
                "event_id": f"{lead}-demo", "lead_id": lead, "type": "demo_request",
                "occurred_at": NOW.isoformat()})

        def outcome_per_lead(rs: list[dict[str, Any]]) -> bool:
            return len({r["lead_id"] for r in rs}) >= len(LEADS)

        events = await collect(broker, topics.assignments, until=outcome_per_lead,
                               timeout=60, settle=2.0)
        assigned_events = [e for e in events if e["type"] == "lead.assigned"]
        queued = [e for e in events if e["type"] == "lead.queued"]
        # every SQL: exactly one outcome (repeats already dropped by event_id)
        assert Counter(e["lead_id"] for e in events) == Counter(LEADS)
        assert len(assigned_events) == len(REPS) * CAPACITY
        assert len(queued) == len(LEADS) - len(REPS) * CAPACITY
        per_rep = Counter(e["rep_id"] for e in assigned_events)
        assert per_rep == {r: CAPACITY for r in REPS}  # round-robin fills evenly, cap held
        assert all(e["rule"] == "language_round_robin" and e["pool"] == "EMEA"
                   for e in assigned_events)
        for e in assigned_events + queued:
            chosen = [t for t in e["trace"] if "chosen" in t]
            assert all(t["rep_id"] not in ("R-E", "R-F") for t in chosen)
        assert all(e["sla"]["class"] == "high_intent" for e in events)

        # freeing three of R-A's slots drains three queued leads, oldest first, to R-A
        held_by_a = sorted(e["lead_id"] for e in assigned_events if e["rep_id"] == "R-A")[:3]
        for n, lead in enumerate(held_by_a):
            await send(producer, topics.activity, lead, {
                "event_id": f"sa-{n}", "lead_id": lead, "rep_id": "R-A", "type": "accepted",
                "occurred_at": NOW.isoformat()})
        # ...and activity from a rep who does not hold the lead is refused, not applied
        await send(producer, topics.activity, held_by_a[0], {
            "event_id": "sa-wrong", "lead_id": held_by_a[0], "rep_id": "R-B",
            "type": "released", "occurred_at": NOW.isoformat()})
        queued_leads = {e["lead_id"] for e in queued}
        later = await collect(
            broker, topics.assignments,
            until=lambda rs: sum(r["type"] == "lead.assigned" and r["lead_id"] in queued_leads
                                 for r in rs) >= 3,
            timeout=40, settle=2.0)
        drained = [e for e in later if e["type"] == "lead.assigned"
                   and e["lead_id"] in queued_leads]
        assert len(drained) == 3
        assert {e["rep_id"] for e in drained} == {"R-A"}
        letters = await collect(broker, topics.deadletter, until=lambda rs: len(rs) >= 1,
                                timeout=20)
        assert [(x["reason"], x["key"]) for x in letters] == [("not_holder", held_by_a[0])]
        assert "R-B does not hold lead" in letters[0]["error"]
    finally:
        for w in workers:
            w.stop()
