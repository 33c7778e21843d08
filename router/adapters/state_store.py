"""Table state behind one interface: read a key of a partition, write it (store + changelog),
list a partition. The worker never touches a faust store directly, so the memory and the
RocksDB stores are interchangeable (`LEADROUTER_STORE`).

Why not faust's `table[key] = value`: inside a `take()` batch faust picks the store partition
(and the changelog partition) from the "current event", which is the batch's last event and
may belong to another partition. Here the partition is always the input record's own.

Write order (see router.worker.app): outputs are acknowledged first, then `put` writes the
local store, and `flush` sends the batch's changelog records and waits for the broker's acks
before the input batch is acked (so before its offsets can be committed). With RocksDB each
partition's database also records the last acknowledged changelog offset, so a restarted
worker with the same data dir replays only the changelog records after it.

Why not faust's `table.send_changelog`: it costs a FutureMessage, a buffer round and a
per-record produce call for every state write, about a quarter of the worker's time under
load (measured with py-spy in `make bench`). `flush` hands the broker one record batch per
partition per input batch, built with aiokafka's batch API.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from faust.types import TP

from router.metrics import CHANGELOG_RESTORED


class FaustTableState:
    """A faust table (memory or RocksDB store) as get / put / flush / items by partition."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.restored = 0
        self._pending: dict[int, list[tuple[bytes, bytes | None]]] = {}
        self._rocksdb: bool | None = None  # known once faust has created the store
        apply_batch = table.apply_changelog_batch

        def counting_apply(batch: Any) -> None:
            """Count what recovery replays: the figure the RocksDB store is meant to cut."""
            events = list(batch)
            self.restored += len(events)
            CHANGELOG_RESTORED.labels(table.name).inc(len(events))
            apply_batch(events)

        table.apply_changelog_batch = counting_apply

    @property
    def _store(self) -> Any:
        return self.table.data

    def _is_rocksdb(self) -> bool:
        if self._rocksdb is None:  # asked on every put: decide it once
            self._rocksdb = hasattr(self._store, "_db_for_partition")
        return self._rocksdb

    def get(self, partition: int, key: bytes) -> bytes | None:
        store = self._store
        if self._is_rocksdb():
            value: bytes | None = store._db_for_partition(partition).get(key)
            return value
        value = store.get(key)
        return value

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        store = self._store
        if self._is_rocksdb():
            db = store._db_for_partition(partition)
            if value is None:
                db.delete(key)
                store._key_index.pop(key, None)
            else:
                db.put(key, value)
                store._key_index[key] = partition
        elif value is None:
            store.pop(key, None)
            store._key_partition.pop(key, None)
        else:
            store[key] = value
            store._key_partition[key] = partition
        self._pending.setdefault(partition, []).append((key, value))

    async def flush(self) -> None:
        """Send the changelog records written since the last flush and wait for the acks."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        producer = self.table.app.producer._ensure_producer()  # the app's aiokafka producer
        topic = self.table.changelog_topic.get_topic_name()
        sent: list[tuple[int, int, Any]] = []
        for partition, records in pending.items():
            batch, count = producer.create_batch(), 0
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    sent.append((partition, count, await producer.send_batch(
                        batch, topic, partition=partition)))
                    batch, count = producer.create_batch(), 0
                    batch.append(key=key, value=value, timestamp=None)  # a first one fits
                count += 1
            sent.append((partition, count,
                         await producer.send_batch(batch, topic, partition=partition)))
        rocksdb = self._is_rocksdb()
        for partition, count, future in sent:
            metadata = await future
            if rocksdb:  # what a restart on this data dir need not replay
                self._store.set_persisted_offset(TP(topic, partition),
                                                 metadata.offset + count - 1)

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        store = self._store
        if self._is_rocksdb():
            yield from store._visible_items(store._db_for_partition(partition))
            return
        for key, value in list(store.items()):
            if store._key_partition.get(key, partition) == partition and value is not None:
                yield key, value
