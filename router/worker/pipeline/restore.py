"""Step 1 of the processor's loop, for the tasks that need it (a new assignment, or a reset
after a fenced producer): everything a task needs before it may process a record.

  a. exactly-once: start the task's transactional producer (transactional_id
     "{app_id}-{stage}-{partition}"). Its InitProducerId bumps the id's epoch, which fences
     the previous owner's producer (a zombie: it can no longer write or commit), and the
     broker completes that producer's open transaction before answering;
  b. restore the task's store from its changelog partition with a plain consumer, to the
     end (read_committed: aborted records are skipped; to the last stable offset, which
     after (a) includes the previous owner's last commit). RocksDB starts after the
     changelog offset it persisted, the memory store from the beginning;
  c. fetch the group's committed offsets of the task's inputs (now, after the fence), from
     which the processor resumes each input at the later of those and the offsets the
     changelog carries (core.resume_positions), and makes the task ready.

With one producer per worker (txn_tuning: worker_transactions, worker_txn.py) there is no
producer per task to fence with. Instead (c) comes first and asks for stable offsets
(KIP-447's require_stable: the group coordinator waits for any transaction still holding
offsets of these partitions, a zombie's or the previous owner's last), and (b) then reads the
changelog until the input offsets it carries reach those: the commit markers reach the
offsets partition and the changelog partition at their own pace, and state one transaction
behind its offsets would process that transaction's records again.

Any failure fails the whole step for these tasks; the processor discards what was started
and retries. The task's epoch is checked while restoring: a task revoked meanwhile stops
reading, and core.activate() then refuses it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from router.metrics import CHANGELOG_RESTORED
from router.settings import Settings
from router.worker.pipeline import kip447
from router.worker.pipeline.commit import make_producer, stop_producer
from router.worker.pipeline.core import Ownership, Task
from router.worker.pipeline.loggers import log, tp_name
from router.worker.pipeline.stage import StageSpec
from router.worker.pipeline.store import PartitionStore, open_store
from router.worker.pipeline.txn_tuning import TxnTuning

# worker transactions: how long a restore waits for its changelog to carry the stable offsets
# (the markers of a committed transaction take milliseconds; a group whose offsets were moved
# by hand never catches up, and then the task resumes at the later of the two, as before)
CATCH_UP_SECONDS = 5.0


@dataclass(slots=True)
class Pending:
    task: Task
    epoch: int
    stage: StageSpec
    store: PartitionStore | None = None
    producer: AIOKafkaProducer | None = None


class Restorer:
    def __init__(self, settings: Settings, core: Ownership, tables: Iterable[str], *,
                 exactly_once: bool, read_committed: bool, tuning: TxnTuning,
                 bootstrap: list[str], client: dict[str, Any]) -> None:
        self.settings = settings
        self.core = core
        self.exactly_once = exactly_once
        self.read_committed = read_committed
        self.tuning = tuning
        self.bootstrap = bootstrap
        self.client = client
        self.restored: Counter[str] = Counter({t: 0 for t in tables})

    async def prepare(self, pending: list[Pending], group: AIOKafkaConsumer
                      ) -> dict[TopicPartition, int | None]:
        """(a), (b) and (c) for these tasks; returns the group's committed offsets (c)."""
        per_task = self.exactly_once and not self.tuning.worker_transactions
        if per_task:  # (a) fence the previous owners first
            await asyncio.gather(*(self._fence(p) for p in pending))
        for p in pending:
            p.store = open_store(self.settings.store, self.settings.data_dir,
                                 self.settings.app_id, str(p.task.id),
                                 self.settings.rocksdb_memory_mb)
        if self.exactly_once and not per_task:  # (c) stable, then (b) up to it
            tps = [tp for p in pending for tp in p.task.inputs]
            committed = await kip447.committed_stable(group, tps)
            await self._restore(pending, reach=committed)
            return committed
        await self._restore(pending)  # (b)
        return await _committed(group, pending)  # (c), after the fence

    async def _fence(self, p: Pending) -> None:
        producer = make_producer(
            self.settings, self.tuning,
            f"{self.settings.app_id}-{p.task.id.stage}-{p.task.id.partition}")
        p.producer = producer
        await producer.start()
        # aiokafka's only public wait for InitProducerId: an empty transaction
        await producer.begin_transaction()
        await producer.abort_transaction()

    async def _restore(self, pending: list[Pending],
                       reach: dict[TopicPartition, int | None] | None = None) -> None:
        """Each changelog to its end; with `reach`, also until its input offsets reach these
        (for at most CATCH_UP_SECONDS, then with a warning)."""
        by_tp = {TopicPartition(p.stage.changelog, p.task.id.partition): p for p in pending}
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if self.read_committed else "read_uncommitted",
            fetch_max_wait_ms=self.settings.fetch_wait_ms(), **self.client)
        await consumer.start()
        try:
            consumer.assign(list(by_tp))
            start: dict[TopicPartition, int] = {}
            for tp, p in by_tp.items():
                assert p.store is not None
                at = p.store.changelog_offset
                if at is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    start[tp] = at + 1
                    consumer.seek(tp, at + 1)
            left = set(by_tp)
            deadline = time.monotonic() + CATCH_UP_SECONDS
            while left:
                fetched = await consumer.getmany(*left, timeout_ms=500, max_records=20_000)
                for tp, records in fetched.items():
                    p = by_tp[tp]
                    assert p.store is not None
                    if records[0].offset < start.pop(tp, 0):
                        # the fetcher reset us to the beginning: the changelog is shorter than
                        # what this data dir says it applied (the topic was recreated)
                        log.warning("changelog behind the local store; rebuilding it",
                                    extra={"changelog": tp_name(tp)})
                        p.store.wipe()
                    p.store.write([(r.key, r.value) for r in records if r.key is not None],
                                  records[-1].offset)
                    self.restored[p.stage.table] += len(records)
                    CHANGELOG_RESTORED.labels(p.stage.table).inc(len(records))
                for tp in list(left):
                    p = by_tp[tp]
                    if not self.core.is_current(p.task.id, p.epoch):
                        left.discard(tp)  # revoked meanwhile: activate() will refuse it
                    elif await self._at_end(consumer, tp) and _carries(p, reach, deadline):
                        left.discard(tp)
        finally:
            await consumer.stop()

    async def _at_end(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
        """Read to the end. The end comes from Fetch responses, never ListOffsets (Tansu
        answers ListOffsets wrongly): the last stable offset reading read_committed, else
        the high watermark."""
        end = consumer.last_stable_offset(tp) if self.read_committed else None
        if end is None or end < 0:
            end = consumer.highwater(tp)
        return end is not None and await consumer.position(tp) >= end


def _carries(p: Pending, reach: dict[TopicPartition, int | None] | None,
             deadline: float) -> bool:
    """The restored state carries input offsets at least `reach` (or there is none to reach,
    or the wait is over)."""
    if reach is None:
        return True
    assert p.store is not None
    stored = p.store.input_offsets
    behind = {tp_name(tp): (stored.get(tp.topic), want) for tp in p.task.inputs
              if (want := reach.get(tp)) is not None and stored.get(tp.topic, -1) < want}
    if not behind:
        return True
    if time.monotonic() < deadline:
        return False
    log.warning("changelog never reached the group's committed offsets; resuming at the later",
                extra={"task": str(p.task.id), "stored_vs_committed": behind})
    return True


async def _committed(group: AIOKafkaConsumer, pending: list[Pending]
                     ) -> dict[TopicPartition, int | None]:
    tps = [tp for p in pending for tp in p.task.inputs]
    values = await asyncio.gather(*(group.committed(tp) for tp in tps))
    return dict(zip(tps, values, strict=True))


async def discard(p: Pending) -> None:
    """Close what an initialisation that went stale or failed had started."""
    if p.store is not None:
        p.store.close()
    if p.producer is not None:
        await stop_producer(p.producer)
