"""MQL decay on a real broker (SPEC §2.2), with a decay window of a few seconds: an MQL that
goes quiet is recycled once, with reason `decayed`, even when its deadline passes while no
worker runs; a restarted worker does not fire it again; an engaged MQL does not decay; the
lead view and the verifier both see it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from router.adapters.topics import Topics
from router.domain.rules import load_rules
from router.harness.brokers import LocalBroker
from router.tools.verify import verify
from tests.integration.conftest import collect, new_prefix, send, start_worker

pytestmark = pytest.mark.integration

WINDOW_SECONDS = 6.0


def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "decay-seconds.yaml"
    path.write_text(f"name: decay-test\ndecay: {{mql_after_days: {WINDOW_SECONDS / 86400!r}}}\n",
                    encoding="utf-8")
    return path


def iso(moment: datetime) -> str:
    return moment.isoformat()


async def make_mql(producer: AIOKafkaProducer, topics: Topics, lead: str, now: datetime
                   ) -> None:
    """Manager/influencer at a fitting company, two touches with intent: MQL, never SQL."""
    await send(producer, topics.profiles, lead, {
        "lead_id": lead, "updated_at": iso(now - timedelta(seconds=2)), "seniority": "manager",
        "buying_role": "influencer", "country": "DE",
        "company": {"domain": "acme.io", "employees": 420, "industry": "saas"}})
    for i, kind in enumerate(("page_view", "pricing_page_view")):
        await send(producer, topics.touchpoints, lead, {
            "event_id": f"{lead}-t{i}", "lead_id": lead, "type": kind,
            "occurred_at": iso(now - timedelta(seconds=1 - i))})


def of(lead: str, kind: str) -> Any:
    return lambda rs: any(r["lead_id"] == lead and r["type"] == kind for r in rs)


async def test_a_quiet_mql_decays_once_across_restarts_and_an_engaged_one_does_not(
        broker: LocalBroker, producer: AIOKafkaProducer, tmp_path: Path) -> None:
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    rules = rules_file(tmp_path)
    worker = start_worker(broker, prefix, tmp_path, LEADROUTER_RULES=str(rules))
    quiet, engaged = "L-quiet", "L-engaged"
    try:
        started = datetime.now(UTC)
        await make_mql(producer, topics, quiet, started)
        await collect(broker, topics.transitions, until=of(quiet, "lead.mql"), timeout=30,
                      settle=0)
        worker.kill()  # the deadline passes while no worker runs: the state must carry it
    finally:
        worker.stop()
    await asyncio.sleep(WINDOW_SECONDS)
    worker = start_worker(broker, prefix, tmp_path, LEADROUTER_RULES=str(rules))
    try:
        # meanwhile, a second MQL that keeps engaging faster than the window
        now = datetime.now(UTC)
        await make_mql(producer, topics, engaged, now)
        seen = await collect(broker, topics.transitions, until=of(quiet, "lead.recycled"),
                             timeout=40, settle=0)
        for i in range(1, 5):
            await asyncio.sleep(WINDOW_SECONDS / 3)
            await send(producer, topics.touchpoints, engaged, {
                "event_id": f"{engaged}-more{i}", "lead_id": engaged, "type": "page_view",
                "occurred_at": iso(datetime.now(UTC))})
        engaged_until = datetime.now(UTC)
        status, view = worker.get(f"/leads/{quiet}")
        assert status == 200, view
        worker.stop()
    finally:
        worker.stop()
    [recycled] = [r for r in seen if r["lead_id"] == quiet and r["type"] == "lead.recycled"]
    assert recycled["event_id"] == f"{quiet}:c1:recycled"
    assert recycled["criteria"]["recycled_because"] == "decayed"
    assert (recycled["from_stage"], recycled["to_stage"], recycled["cycle"]) == ("mql", "new", 1)
    newest_touch = started  # the second touch was dated `started`
    decayed_at = datetime.fromisoformat(recycled["occurred_at"])
    assert abs((decayed_at - newest_touch).total_seconds() - WINDOW_SECONDS) < 0.01
    q = view["qualification"]
    assert (q["stage"], q["cycle"]) == ("new", 2)
    assert q["decay"] == {"state": "decayed", "cycle": 1, "at": recycled["occurred_at"]}

    # a third worker, well after every deadline: nothing fires again
    worker = start_worker(broker, prefix, tmp_path, LEADROUTER_RULES=str(rules))
    try:
        everything = await collect(broker, topics.transitions, until=lambda rs: False,
                                   timeout=WINDOW_SECONDS + 4, keep_repeats=True)
        status, engaged_view = worker.get(f"/leads/{engaged}")
    finally:
        worker.stop()
    recycles = [r for r in everything if r["type"] == "lead.recycled"]
    # repeats of an at-least-once stream may only carry the same id
    assert {r["event_id"] for r in recycles if r["lead_id"] == quiet} == {f"{quiet}:c1:recycled"}
    # the engaged lead decayed only once it went quiet (after its last touch), never before
    engaged_recycles = [r for r in recycles if r["lead_id"] == engaged]
    for r in engaged_recycles:
        assert datetime.fromisoformat(r["occurred_at"]) >= engaged_until - timedelta(seconds=1) \
            + timedelta(seconds=WINDOW_SECONDS - 1)
    assert status == 200
    assert engaged_view["qualification"]["cycle"] == 1 + len(
        {r["event_id"] for r in engaged_recycles})

    report = await verify(broker.url, prefix, load_rules(rules))
    assert report.violations == [], report.render()
    assert report.counts["mqls decayed"] == 1 + len({r["event_id"] for r in engaged_recycles})
