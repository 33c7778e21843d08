"""read_topic against a real broker: a bounded read_committed read finds every committed record.

aiokafka's default "latest" reset, started by assign(), could land after seek_to_beginning()
and leave every position at the end: the read returned nothing (0 SQLs in `make bench`'s
routing phase, in about one read in 10-25). Many reads side by side make a miss near certain.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer

from router.tools.history import read_topic
from tests.integration.conftest import create_topic

COMMITTED = 400
PARTITIONS = 8


async def test_read_committed_finds_every_committed_record_every_time(broker: Any) -> None:
    topic = await create_topic(broker, "history", PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=1,
                                transactional_id=f"{topic}-txn")
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(COMMITTED):
                await producer.send(topic, b'{"type": "lead.sql"}', key=f"L-{i}".encode())
        # an open transaction too, as a live exactly-once worker always has one
        await producer.begin_transaction()
        for i in range(PARTITIONS * 5):
            await producer.send(topic, b"open", key=f"L-{i}".encode())
        await producer.flush()
        counts: list[int] = []
        for _ in range(30):
            reads = await asyncio.gather(*(
                read_topic([broker.bootstrap], topic, isolation_level="read_committed",
                           timeout=30) for _ in range(10)))
            counts += [len(records) for records in reads]
        await producer.abort_transaction()
    finally:
        await producer.stop()
    short = [c for c in counts if c != COMMITTED]
    assert not short, f"{len(short)} of {len(counts)} reads were short: {sorted(set(short))}"
