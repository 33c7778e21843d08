"""The pip-only path stays honest: on Tansu, a worker recognises the broker, switches its
workarounds on by itself (no LEADROUTER_BROKER_QUIRKS set), qualifies a lead and routes it."""

from __future__ import annotations

from pathlib import Path

from aiokafka import AIOKafkaProducer

from router.adapters.topics import Topics
from router.harness.brokers import LocalBroker
from tests.integration.builders import profile, touch_days_ago
from tests.integration.conftest import collect, new_prefix, send, start_worker


async def test_a_worker_on_tansu_qualifies_and_routes_a_lead(
    tansu_broker: LocalBroker, tmp_path: Path
) -> None:
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    producer = AIOKafkaProducer(bootstrap_servers=tansu_broker.bootstrap, linger_ms=1)
    await producer.start()
    worker = start_worker(tansu_broker, prefix, tmp_path)
    try:
        log = worker.log_path.read_text()
        assert "broker_kind=tansu" in log and "workarounds are on" in log, log[-2000:]
        await send(producer, topics.reps, "R-T1", {"rep_id": "R-T1", "pools": ["EMEA"],
                                                   "languages": ["es"]})
        await send(producer, topics.profiles, "L-tansu", profile("L-tansu"))
        await send(producer, topics.touchpoints, "L-tansu",
                   touch_days_ago("L-tansu", 1, "demo_request", 0.01))
        assigned = await collect(tansu_broker, topics.assignments,
                                 until=lambda rs: any(r["type"] == "lead.assigned" for r in rs),
                                 timeout=60)
        transitions = await collect(tansu_broker, topics.transitions,
                                    until=lambda rs: len(rs) >= 1, timeout=10)
    finally:
        worker.stop()
        await producer.stop()
    assert [(t["type"], t["path"]) for t in transitions] == [("lead.sql", "direct")]
    assert [(a["type"], a["rep_id"]) for a in assigned] == [("lead.assigned", "R-T1")]
