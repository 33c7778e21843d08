"""Workarounds for the embedded Tansu broker, in one place, switched on only for it.

Switched on by `broker_quirks = "tansu"` (the demo and the test suite set it). On Apache Kafka
none of this runs. Each workaround has a test in tests/integration/test_tansu_quirks.py that
shows the broker behaviour it works around (see ../shared/BROKER.md for the measurements).

1. ListOffsets reports the end of a partition as "first offset of the last batch + 1", not
   "last offset + 1". Faust trusts that number to decide when table recovery is complete, so
   recovery stopped early and a worker resumed on stale state. The Fetch response's high
   watermark is right, so `fetch_end_offsets` reads one fetch per partition and uses that.
2. A fetch waits its whole `fetch_max_wait_ms` even when data is there. Faust hard-codes
   1500 ms; the worker lowers it for every broker (see `router.worker.app`), which is harmless
   on Kafka (where a fetch returns as soon as data arrives) and essential here.
3. No idempotent or transactional producer: the worker never asks for one on this broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

_installed = False


async def fetch_end_offsets(
    bootstrap: list[str], partitions: Iterable[TopicPartition], timeout: float = 10.0
) -> dict[TopicPartition, int]:
    """End offsets (last offset + 1) taken from Fetch high watermarks, not from ListOffsets."""
    # faust passes its own TP namedtuple; aiokafka insists on its TopicPartition
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


def install_faust_recovery_fix() -> None:
    """Make faust's table recovery wait for the true end of each changelog partition."""
    global _installed
    if _installed:
        return
    from faust.transport.drivers import aiokafka as faust_aiokafka

    thread_cls: Any = faust_aiokafka.AIOKafkaConsumerThread
    original = thread_cls._highwaters

    async def _highwaters(self: Any, partitions: list[TopicPartition]) -> Mapping[Any, int]:
        consumer = self._ensure_consumer()
        if self.consumer.in_transaction:
            return await original(self, partitions)  # type: ignore[no-any-return]
        bootstrap = consumer._client._bootstrap_servers
        fixed = await fetch_end_offsets(bootstrap, partitions)
        log.debug("end offsets from fetch high watermarks", extra={"offsets": str(fixed)})
        return {tp: fixed[TopicPartition(tp.topic, tp.partition)] for tp in partitions}

    thread_cls._highwaters = _highwaters
    _installed = True
