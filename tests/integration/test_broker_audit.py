"""The broker behaviours our workarounds were written for, shown on Apache Kafka and on Tansu.

Each test states what the behaviour is on the broker of record (Apache Kafka) and, where the
workaround exists for Tansu, what it is there. The README's reliability section quotes these
tests: a workaround whose behaviour does not happen on Kafka is switched on for Tansu alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from router.adapters.broker_kind import identify
from router.adapters.tansu_quirks import fetch_end_offsets
from router.adapters.topics import compacted_topic_configs
from router.harness.brokers import LocalBroker
from router.settings import Settings
from tests.integration.conftest import new_prefix


async def create_topic(bootstrap: str, name: str, partitions: int = 1,
                       configs: dict[str, str] | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])
    finally:
        await admin.close()


@pytest.fixture
def kafka(broker: LocalBroker) -> LocalBroker:
    if broker.kind != "kafka":
        pytest.skip("this test shows Apache Kafka's behaviour (LEADROUTER_LOCAL_BROKER=tansu)")
    return broker


async def test_kafka_list_offsets_reports_the_true_end(kafka: LocalBroker) -> None:
    """Workaround 1 (end offsets from the fetch high watermark) is for Tansu only: Kafka's
    ListOffsets already says "last offset + 1" (Tansu's says "first offset of the last
    batch + 1": tests/integration/test_tansu_quirks.py)."""
    topic = new_prefix() + "ends"
    await create_topic(kafka.bootstrap, topic, partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=50)
    await producer.start()
    futures = [await producer.send(topic, b"x" * 50, partition=0) for _ in range(100)]
    await asyncio.gather(*futures)
    await producer.stop()
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap)
    await consumer.start()
    try:
        reported = await consumer.end_offsets([tp0, tp1])
    finally:
        await consumer.stop()
    assert reported == {tp0: 100, tp1: 0}
    # and the workaround agrees, so it would be harmless, only slower
    assert await fetch_end_offsets([kafka.bootstrap], [tp0, tp1]) == reported


async def fetch_delays(bootstrap: str, topic: str, max_wait_ms: int, samples: int
                       ) -> list[float]:
    """Seconds from producing one record to a waiting consumer receiving it."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="latest",
                                fetch_max_wait_ms=max_wait_ms, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await consumer.start()
    await producer.start()
    delays = []
    try:
        await consumer.getmany(timeout_ms=500)  # assignment and first (empty) fetch
        for i in range(samples):
            receive = asyncio.create_task(consumer.getmany(timeout_ms=max_wait_ms * 3))
            await asyncio.sleep(0.3)  # the fetch is now waiting on the broker
            sent_at = time.monotonic()
            await producer.send_and_wait(topic, b"ping-%d" % i)
            got: dict[TopicPartition, list[object]] = {}
            while not got:
                got = await receive
                if not got:
                    receive = asyncio.create_task(consumer.getmany(timeout_ms=max_wait_ms))
            delays.append(time.monotonic() - sent_at)
    finally:
        await producer.stop()
        await consumer.stop()
    return delays


async def test_kafka_answers_a_fetch_as_soon_as_data_arrives(kafka: LocalBroker) -> None:
    """Workaround 2 (fetch wait 100 ms instead of faust's 1500) was forced by Tansu holding
    every fetch for its whole wait. Kafka answers as soon as data arrives, so the wait only
    bounds how often an idle consumer polls: with a 2 s wait, a record still arrives in
    milliseconds (the median of 5; the limit is loose because the machine is shared)."""
    topic = new_prefix() + "wait"
    await create_topic(kafka.bootstrap, topic)
    delays = sorted(await fetch_delays(kafka.bootstrap, topic, max_wait_ms=2000, samples=5))
    print(f"Kafka, fetch wait 2000 ms: delivery delays {[round(d * 1000) for d in delays]} ms")
    assert delays[len(delays) // 2] < 0.5, delays


async def test_kafka_transactions_isolate_aborted_records(kafka: LocalBroker) -> None:
    """Exactly-once needs this, and Tansu lacks it (BROKER.md: aiokafka's InitProducerId v0
    fails there). A read_committed reader sees committed records only."""
    topic = new_prefix() + "txn"
    await create_topic(kafka.bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap,
                                transactional_id=new_prefix() + "audit")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send(topic, b"committed")
        await producer.begin_transaction()
        await producer.send(topic, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"committed-2")
    finally:
        await producer.stop()
    seen: dict[str, list[bytes]] = {}
    for isolation in ("read_committed", "read_uncommitted"):
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap,
                                    auto_offset_reset="earliest", isolation_level=isolation)
        await consumer.start()
        values: list[bytes] = []
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(values) < (2 if isolation ==
                                                                  "read_committed" else 3):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    values.extend(r.value for r in records)
        finally:
            await consumer.stop()
        seen[isolation] = values
    assert seen["read_committed"] == [b"committed", b"committed-2"]
    assert seen["read_uncommitted"] == [b"committed", b"aborted", b"committed-2"]


async def test_kafka_compacts_the_topics_the_router_creates(kafka: LocalBroker) -> None:
    """Compaction is real on Kafka (Tansu stores the config and never compacts): with the
    router's compacted-topic settings and short segments, ten updates per key shrink to
    about one record per key, which is what bounds a memory-store restore."""
    topic = new_prefix() + "compact"
    settings = Settings(compacted_segment_ms=500)
    await create_topic(kafka.bootstrap, topic, configs=compacted_topic_configs(settings))
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=5)
    await producer.start()
    keys = [f"L-{i}".encode() for i in range(300)]
    try:
        for update in range(10):
            batch = [await producer.send(topic, b"v%d" % update, key=k) for k in keys]
            await asyncio.gather(*batch)
            await asyncio.sleep(0.6)  # past segment.ms: the next write rolls a segment
        await producer.send_and_wait(topic, b"roll", key=b"roll")
    finally:
        await producer.stop()
    written = 10 * len(keys) + 1
    deadline = time.monotonic() + 60
    remaining = written
    latest: dict[bytes, bytes] = {}
    while time.monotonic() < deadline:
        latest, remaining = await read_all(kafka.bootstrap, topic)
        if remaining <= 2 * len(keys):
            break
        await asyncio.sleep(2)
    print(f"compaction: {written} records written, {remaining} left for {len(keys)} keys")
    assert all(latest[k] == b"v9" for k in keys)
    assert remaining <= 2 * len(keys), f"{remaining} of {written} records left after 60 s"


async def read_all(bootstrap: str, topic: str) -> tuple[dict[bytes, bytes], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    tp = TopicPartition(topic, 0)
    latest: dict[bytes, bytes] = {}
    count = 0
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                for r in records:
                    count += 1
                    assert r.key is not None
                    latest[r.key] = r.value
    finally:
        await consumer.stop()
    return latest, count


async def test_the_worker_can_tell_the_brokers_apart(broker: LocalBroker,
                                                     tansu_broker: LocalBroker) -> None:
    """What `broker_quirks=auto` relies on: Tansu's cluster id, never Kafka's."""
    kinds = Counter[str]()
    for b in (broker, tansu_broker):
        admin = AIOKafkaAdminClient(bootstrap_servers=b.bootstrap)
        await admin.start()
        try:
            identity = await identify(admin)
        finally:
            await admin.close()
        assert identity.kind == b.kind, identity
        kinds[identity.kind] += 1
    assert kinds["tansu"] == 1
