"""The broker behaviours that router/adapters/tansu_quirks.py works around, shown on the real
embedded broker, and the workaround giving the right answer."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from router.adapters.tansu_quirks import fetch_end_offsets
from router.harness.brokers import LocalBroker
from tests.integration.conftest import new_prefix


async def test_list_offsets_end_is_wrong_and_fetch_high_watermark_is_right(
    tansu_broker: LocalBroker,
) -> None:
    topic = new_prefix() + "quirk"
    admin = AIOKafkaAdminClient(bootstrap_servers=tansu_broker.bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 2, 1)])
    await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=tansu_broker.bootstrap, linger_ms=50)
    await producer.start()
    # one batch of 100 records on partition 0 (offsets 0..99); partition 1 stays empty
    futures = [await producer.send(topic, b"x" * 50, partition=0) for _ in range(100)]
    await asyncio.gather(*futures)
    await producer.stop()

    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer = AIOKafkaConsumer(bootstrap_servers=tansu_broker.bootstrap)
    await consumer.start()
    try:
        reported = await consumer.end_offsets([tp0, tp1])
    finally:
        await consumer.stop()
    # The quirk: ListOffsets says "first offset of the last batch + 1". If this assertion
    # starts failing, Tansu fixed it and the workaround can go.
    assert reported[tp0] < 100, reported
    fixed = await fetch_end_offsets([tansu_broker.bootstrap], [tp0, tp1])
    assert fixed == {tp0: 100, tp1: 0}
