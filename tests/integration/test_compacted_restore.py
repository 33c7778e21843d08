"""Compaction is real on Apache Kafka: after a long history (ten state updates per lead), a
memory-store restore reads a few changelog records per live lead, not ten: the compacted part
holds one per key, and only the newest segments (which Kafka does not clean yet) hold more.
Tansu never compacts, which is why this test is for Kafka only."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from router.adapters.topics import Topics
from router.harness.brokers import LocalBroker
from router.harness.workers import WorkerProcess
from router.tools.history import read_topic
from tests.integration.builders import touch_days_ago
from tests.integration.conftest import new_prefix, send, start_worker, wait_processed

LEADS = [f"L-cmp{i:03d}" for i in range(120)]
UPDATES = 10
BOUND = 3  # records per live lead a restore may read: well under UPDATES, which it read before
TABLE = "lead-state"


def restored(worker: WorkerProcess) -> int:
    status, body = worker.get("/ready")
    assert status == 200, body
    return int(body["changelog_records_restored"][TABLE])


async def changelog_end_total(bootstrap: str, topic: str) -> int:
    """Offsets ever written to the changelog (records plus transaction markers)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def changelog_records(bootstrap: str, topic: str) -> int:
    """Records a restore would read now: every record from the beginning of every partition
    (read_committed, as the worker's restore reads)."""
    return len(await read_topic([bootstrap], topic, isolation_level="read_committed"))


async def test_a_memory_store_restore_reads_only_live_keys_after_a_long_history(
    broker: LocalBroker, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    if broker.kind != "kafka":
        pytest.skip("Tansu never compacts (BROKER.md)")
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    # short segments, so that closed segments exist to compact within the test
    env = {"LEADROUTER_STORE": "memory", "LEADROUTER_COMPACTED_SEGMENT_MS": "500"}
    worker = start_worker(broker, prefix, tmp_path, **env)
    changelog = f"{prefix}leadrouter-{TABLE}-changelog"
    try:
        for update in range(UPDATES):  # page views only: state changes, no transition
            last = None
            for lead in LEADS:
                last = await send(producer, topics.touchpoints, lead,
                                  touch_days_ago(lead, update, "page_view", 20 - update))
            assert last is not None
            await wait_processed(broker, f"{prefix}leadrouter", last, timeout=60)
            await asyncio.sleep(0.6)  # past segment.ms: the next write rolls a segment
        for lead in LEADS[:1]:  # one more write rolls the last full segment
            await send(producer, topics.touchpoints, lead, touch_days_ago(lead, 99, "page_view", 1))
        written = await changelog_end_total(broker.bootstrap, changelog)
        assert written >= UPDATES * len(LEADS), written  # every update reached the changelog
        deadline = time.monotonic() + 90
        left = await changelog_records(broker.bootstrap, changelog)
        while time.monotonic() < deadline and left > BOUND * len(LEADS):
            await asyncio.sleep(3)
            left = await changelog_records(broker.bootstrap, changelog)
        print(f"changelog: {written} offsets written, {left} records left to read,"
              f" for {len(LEADS)} leads x {UPDATES} updates")
        assert left <= BOUND * len(LEADS), f"{left} records left for {len(LEADS)} live keys"
        worker.kill()
    finally:
        worker.stop()
    worker = start_worker(broker, prefix, tmp_path, **env)
    try:
        replayed = restored(worker)
    finally:
        worker.stop()
    print(f"restore replayed {replayed} changelog records for {len(LEADS)} leads")
    assert len(LEADS) <= replayed <= BOUND * len(LEADS), replayed
