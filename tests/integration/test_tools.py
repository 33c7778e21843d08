"""simulate and report against a real broker: a worker runs the hand-worked history
(tests/unit/tools_fixtures.py, moved to the last hour), then both tools read the topics."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from router.adapters.topics import Topics
from router.domain.rules import load_rules
from router.harness.workers import WorkerProcess
from router.tools.history import INPUT_TOPICS, TimeRange, read_broker
from router.tools.report import REPORT_TOPICS, build_report
from router.tools.simulate import simulate
from tests.integration.conftest import collect, send
from tests.unit import tools_fixtures as fx
from tests.unit.tools_fixtures import STRICT


def shifted(event: dict[str, Any], base: datetime) -> dict[str, Any]:
    """The fixture's times, moved so that its minute 0 is `base`."""
    out = dict(event)
    for name in ("occurred_at", "updated_at"):
        if name in out:
            out[name] = fx.iso(datetime.fromisoformat(out[name]) - fx.T0 + base)
    return out


async def test_simulate_and_report_read_what_the_worker_did(
        broker: Any, worker: WorkerProcess, producer: AIOKafkaProducer, topics: Topics,
        prefix: str) -> None:
    base = datetime.now(UTC) - timedelta(minutes=40)
    for rep in fx.REPS_IN:
        await send(producer, topics.reps, rep["rep_id"], rep)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while worker.get("/ready")[1]["reps"] < 1:
        assert loop.time() < deadline, "roster not loaded"
        await asyncio.sleep(0.2)
    for p in fx.PROFILES_IN:
        await send(producer, topics.profiles, p["lead_id"], shifted(p, base))
    # L2's demo request first, and routed, so R-01 (capacity 1) holds L2 and L1 must queue
    first, rest = [t for t in fx.TOUCHES_IN if t["lead_id"] == "L2"], [
        t for t in fx.TOUCHES_IN if t["lead_id"] != "L2"]
    for t in first:
        await send(producer, topics.touchpoints, t["lead_id"], shifted(t, base))
    await collect(broker, topics.assignments, lambda ev: len(ev) >= 1, settle=0.2)
    for t in rest:
        await send(producer, topics.touchpoints, t["lead_id"], shifted(t, base))

    def sqls(events: list[dict[str, Any]]) -> int:
        return sum(1 for e in events if e["type"] == "lead.sql")

    transitions = await collect(broker, topics.transitions, lambda ev: sqls(ev) >= 2)
    assert sorted((e["lead_id"], e["type"]) for e in transitions) == [
        ("L1", "lead.mql"), ("L1", "lead.sql"), ("L2", "lead.sql"), ("L3", "lead.mql")]
    queued = await collect(broker, topics.assignments, lambda ev: len(ev) >= 2, settle=0.2)
    # two leads, two partitions of leads.assignments: a reader sees them in either order
    assert sorted((e["lead_id"], e["type"]) for e in queued) == [("L1", "lead.queued"),
                                                                  ("L2", "lead.assigned")]
    # sales: R-01 touches and rejects L2, which frees the slot for L1; then accepts L1
    now = datetime.now(UTC)
    for kind, minutes, reason in (("first_touch", 0, None), ("rejected", 0.01, "no_fit")):
        a = fx.activity("L2", kind, 0, reason)
        a["occurred_at"] = fx.iso(now + timedelta(minutes=minutes))
        await send(producer, topics.activity, "L2", a)
    assignments = await collect(
        broker, topics.assignments,
        lambda ev: any(e["lead_id"] == "L1" and e["type"] == "lead.assigned" for e in ev))
    for kind in ("first_touch", "accepted"):
        a = fx.activity("L1", kind, 0)
        a["occurred_at"] = fx.iso(datetime.now(UTC))
        await send(producer, topics.activity, "L1", a)
    await collect(broker, topics.sla, lambda ev: sum(e["type"] == "sla.met" for e in ev) >= 2)
    assert {(e["lead_id"], e["type"]) for e in assignments} >= {("L2", "lead.assigned"),
                                                                 ("L1", "lead.assigned")}

    everything = TimeRange(None, None)
    history = await read_broker(broker.url, prefix, INPUT_TOPICS, everything)
    s = simulate(history, load_rules(), STRICT, everything).summary
    assert (s["baseline"]["sql"], s["candidate"]["sql"]) == (2, 1)
    assert s["baseline"]["sql_by_path"] == {"direct": 1, "standard": 1}
    assert s["baseline"]["assigned_by_rep"] == {"R-01": 2}
    assert s["changed"] == 1 and s["changed_leads"][0]["lead_id"] == "L1"
    assert s["sales_evidence"]["sql_dropped"]["accepted"] == 1

    history = await read_broker(broker.url, prefix, REPORT_TOPICS, everything)
    r = build_report(history, everything)
    assert (r["mql"], r["sql"], r["assigned"], r["accepted"], r["rejected"]) == (2, 2, 2, 1, 1)
    assert (r["acceptance_rate"], r["rejection_rate"]) == (0.5, 0.5)
    assert r["rejections_by_reason"] == {"no_fit": 1}
    assert r["mql_to_sql_rate"] == 0.5
    assert r["sql_by_campaign"]["trigger"] == {"search": 1, "nurture": 1}
    assert [f["flag"] for f in r["flags"]][:2] == ["rejection_rate", "no_fit"]
    assert r["first_touch_seconds"]["by_rep"]["R-01"]["count"] == 2
    assert r["queue"]["queued"] == 1 and r["queue"]["still_queued"] == 0

    # the command line reads the same figures (and writes its page)
    cli = subprocess.run(
        [sys.executable, "-m", "router.cli", "report", "--broker", broker.url,
         "--topic-prefix", prefix, "--since", "1d", "--json"],
        capture_output=True, timeout=120, check=True)
    assert {k: orjson.loads(cli.stdout)[k] for k in ("sql", "acceptance_rate")} == {
        "sql": 2, "acceptance_rate": 0.5}
