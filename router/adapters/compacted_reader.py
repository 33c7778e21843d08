"""Every worker's full copy of a small compacted topic (named accounts; later the rep roster).

A plain aiokafka reader, not a faust GlobalTable: GlobalTable updates were reported not to reach
other instances (faust-streaming #283), while a group-less consumer that assigns itself every
partition sees every record by construction, on every worker. `caught_up` is set once the reader
has read up to the high watermark that the first fetches reported, so a worker does not decide
on leads before it knows the named accounts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

V = TypeVar("V")


class CompactedTopicReader(Generic[V]):
    """Keeps `values` = latest value per key of `topic`; a null value (tombstone) removes it."""

    def __init__(
        self,
        bootstrap: list[str],
        topic: str,
        parse: Callable[[bytes, bytes], V],
        *,
        on_change: Callable[[str, V | None], None] | None = None,
        fetch_max_wait_ms: int = 100,
        client_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.parse = parse
        self.on_change = on_change
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.client_kwargs = client_kwargs or {}
        self.values: dict[str, V] = {}
        self.caught_up = asyncio.Event()
        self.refused = 0
        self._stopping = False

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        for _ in range(100):
            parts = consumer.partitions_for_topic(self.topic)
            if parts:
                return [TopicPartition(self.topic, p) for p in sorted(parts)]
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        raise KafkaError(f"topic {self.topic} has no partitions (was it created?)")

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            self.refused += 1
            log.warning("record without key ignored", extra={"topic": self.topic})
            return
        name = key.decode("utf-8", "replace")
        if value is None:
            if self.values.pop(name, None) is not None and self.on_change:
                self.on_change(name, None)
            return
        try:
            parsed = self.parse(key, value)
        except Exception as exc:  # a bad record must not stop the reader
            self.refused += 1
            log.warning(
                "record refused", extra={"topic": self.topic, "key": name, "error": str(exc)}
            )
            return
        self.values[name] = parsed
        if self.on_change:
            self.on_change(name, parsed)

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            **self.client_kwargs,
        )
        await consumer.start()
        try:
            tps = await self._partitions(consumer)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while not self._stopping:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        self.apply(record.key, record.value)
                if not self.caught_up.is_set() and await self._at_end(consumer, tps):
                    self.caught_up.set()
                    log.info(
                        "compacted topic loaded",
                        extra={"topic": self.topic, "keys": len(self.values)},
                    )
        finally:
            await consumer.stop()

    @staticmethod
    async def _at_end(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
        """True once every partition has been fetched at least once and read to its end."""
        for tp in tps:
            highwater = consumer.highwater(tp)  # from Fetch responses: right on every broker
            if highwater is None:
                return False
            if await consumer.position(tp) < highwater:
                return False
        return True

    def stop(self) -> None:
        self._stopping = True
