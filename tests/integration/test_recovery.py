"""A worker killed with SIGKILL and restarted resumes from the state in its changelog:
a lead three touches into the standard path becomes SQL at its 4th touch after the restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from router.adapters.topics import Topics
from router.harness.brokers import LocalBroker
from tests.integration.builders import daily_touch, feed_three_touches
from tests.integration.conftest import collect, new_prefix, send, start_worker, wait_processed


async def test_state_survives_sigkill_and_restart(
    broker: LocalBroker, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    worker = start_worker(broker, prefix, tmp_path)
    leads = [f"L-rec{i}" for i in range(40)]  # spread over all 8 partitions
    try:
        last = await feed_three_touches(producer, topics, leads)
        await wait_processed(broker, f"{prefix}leadrouter", last)
        before = await collect(broker, topics.transitions,
                               until=lambda rs: len(rs) >= len(leads), timeout=30)
        assert sorted(r["event_id"] for r in before) == sorted(f"{x}:c1:mql" for x in leads)
        worker.kill()
    finally:
        worker.stop()

    worker = start_worker(broker, prefix, tmp_path)
    try:
        for lead in leads:
            # 4th touch, a 2nd pricing view 2 days after the 1st: SQL only if state survived
            await send(producer, topics.touchpoints, lead,
                       daily_touch(lead, 3, "pricing_page_view"))
        after = await collect(
            broker, topics.transitions,
            until=lambda rs: sum(r["type"] == "lead.sql" for r in rs) >= len(leads), timeout=40)
    finally:
        worker.stop()
    sqls = [r for r in after if r["type"] == "lead.sql"]
    assert sorted(r["lead_id"] for r in sqls) == sorted(leads)
    assert all(r["criteria"]["engagement"]["touchpoints_in_window"] == 4 for r in sqls)
    assert all(r["from_stage"] == "mql" for r in sqls)  # no second MQL after the restart
    mqls = [r for r in after if r["type"] == "lead.mql"]
    assert len(mqls) == len(leads)  # the ones from before (repeats dropped by event_id)


@pytest.mark.parametrize("url", ["kafka://127.0.0.1:1"])
def test_missing_broker_names_the_url(url: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "router", "worker", "--broker", url,
         "--broker-wait-seconds", "1", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "cannot reach the Kafka broker at kafka://127.0.0.1:1" in result.stderr
