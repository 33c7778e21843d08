"""The RocksDB store (LEADROUTER_STORE=rocksdb) on a data dir that survives the process: a
worker SIGKILLed and restarted on the same data dir replays only the changelog records written
after the last one it had persisted, not the whole changelog as the memory store does, and the
state it resumes with is the same (a lead three touches into the standard path becomes SQL at
its 4th touch after the restart)."""

from __future__ import annotations

from pathlib import Path

from aiokafka import AIOKafkaProducer

from router.adapters.topics import Topics
from router.harness.brokers import LocalBroker
from router.harness.workers import WorkerProcess
from tests.integration.builders import daily_touch, feed_three_touches
from tests.integration.conftest import collect, new_prefix, send, start_worker, wait_processed

LEADS = [f"L-rdb{i}" for i in range(40)]
TABLE = "lead-state"


def restored(worker: WorkerProcess) -> int:
    status, body = worker.get("/ready")
    assert status == 200, body
    return int(body["changelog_records_restored"][TABLE])


async def run_kill_restart(broker: LocalBroker, producer: AIOKafkaProducer,
                           data_dir: Path, store: str) -> tuple[int, int]:
    """(changelog records replayed by the restarted worker, SQLs after the restart)."""
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    env = {"LEADROUTER_STORE": store}
    worker = start_worker(broker, prefix, data_dir, **env)
    try:
        assert restored(worker) == 0  # a fresh data dir and an empty changelog
        last = await feed_three_touches(producer, topics, LEADS)
        await wait_processed(broker, f"{prefix}leadrouter", last)
        await collect(broker, topics.transitions, until=lambda rs: len(rs) >= len(LEADS),
                      timeout=30)
        worker.kill()
    finally:
        worker.stop()
    worker = start_worker(broker, prefix, data_dir, **env)  # same data dir
    try:
        replayed = restored(worker)
        for lead in LEADS:
            await send(producer, topics.touchpoints, lead,
                       daily_touch(lead, 3, "pricing_page_view"))
        after = await collect(
            broker, topics.transitions,
            until=lambda rs: sum(r["type"] == "lead.sql" for r in rs) >= len(LEADS), timeout=40)
    finally:
        worker.stop()
    sqls = {r["lead_id"] for r in after if r["type"] == "lead.sql"}
    assert sqls == set(LEADS), f"{store}: state lost across the restart"
    return replayed, len(sqls)


async def test_rocksdb_restart_replays_only_the_tail_of_the_changelog(
    broker: LocalBroker, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    memory_replayed, _ = await run_kill_restart(broker, producer, tmp_path / "mem", "memory")
    rocks_replayed, _ = await run_kill_restart(broker, producer, tmp_path / "rocks", "rocksdb")
    # the memory store rebuilds every lead from the changelog: at least one record per lead
    assert memory_replayed >= len(LEADS)
    # RocksDB kept them on disk: at most the few records written after the last persisted
    # offset of a partition (none when every changelog ack arrived before the kill)
    assert rocks_replayed < len(LEADS) // 4, (memory_replayed, rocks_replayed)
    print(f"changelog records replayed after restart: memory {memory_replayed},"
          f" rocksdb {rocks_replayed}")
