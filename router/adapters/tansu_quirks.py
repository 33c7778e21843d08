"""Workarounds for the embedded Tansu broker, in one place, switched on only for it.

Switched on by `broker_quirks = "tansu"` (the demo and the test suite set it). On Apache Kafka
none of this runs. Each workaround has a test in tests/integration/test_tansu_quirks.py that
shows the broker behaviour it works around (see ../shared/BROKER.md for the measurements).

1. ListOffsets reports the end of a partition as "first offset of the last batch + 1", not
   "last offset + 1". The Fetch response's high watermark is right, so `fetch_end_offsets`
   reads one fetch per partition and uses that (the tools, the bench and the chaos harness
   call it; the partition processor restores to the Fetch response's end on every broker).
2. A fetch waits its whole `fetch_max_wait_ms` even when data is there. The worker's fetch
   wait is chosen for the broker (`Settings.fetch_wait_ms`: 100 ms here, 500 ms on Kafka,
   where a fetch returns as soon as data arrives).
3. No idempotent or transactional producer: the worker never asks for one on this broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition


async def fetch_end_offsets(
    bootstrap: list[str], partitions: Iterable[TopicPartition], timeout: float = 10.0
) -> dict[TopicPartition, int]:
    """End offsets (last offset + 1) taken from Fetch high watermarks, not from ListOffsets."""
    # callers may pass any (topic, partition) pair; aiokafka insists on its TopicPartition
    tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=1024,  # we only want the high watermark, not the records
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        reported = await consumer.end_offsets(tps)
        for tp in tps:
            # Fetch from inside the last batch: the response carries the true high watermark.
            consumer.seek(tp, max(reported[tp] - 1, 0))
        result: dict[TopicPartition, int] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(result) < len(tps):
            await consumer.getmany(*[tp for tp in tps if tp not in result], timeout_ms=200)
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None and tp not in result:
                    result[tp] = max(hw, reported[tp])
            if loop.time() > deadline:
                missing = [tp for tp in tps if tp not in result]
                raise TimeoutError(f"no high watermark for {missing} within {timeout:.0f} s")
        return result
    finally:
        await consumer.stop()

