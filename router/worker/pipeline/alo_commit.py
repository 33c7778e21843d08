"""At-least-once commits (Tansu, or exactly_once off): for the whole batch, every task at once,

    outputs sent and acked -> changelog records acked -> local store written ->
    offsets committed

so state never runs ahead of what was published. A crash between two steps replays the batch:
same outputs with the same deterministic event ids (consumers drop repeats). The changelog
carries the input offsets too, so a failed offset commit costs nothing but a warning: a new
owner resumes after this batch from what the changelog says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition

from router.worker.pipeline.commit import TaskControl, last_offset, send_changelog
from router.worker.pipeline.core import Ownership, TaskId
from router.worker.pipeline.loggers import log, trace_commit
from router.worker.pipeline.stage import Decision, StageSpec
from router.worker.pipeline.store import PartitionStore


class AtLeastOnceCommits:
    """Shares the processor's task bookkeeping (core) and stores; the non-transactional
    producer and the group's consumer are the processor's, passed per commit."""

    def __init__(self, core: Ownership, stages: Mapping[str, StageSpec],
                 stores: dict[TaskId, PartitionStore], *, control: TaskControl) -> None:
        self.core = core
        self.stages = stages
        self.stores = stores
        self.control = control

    async def commit(self, decided: list[Decision], producer: AIOKafkaProducer,
                     consumer: AIOKafkaConsumer) -> None:
        """outputs acked -> changelog acked -> local store -> offsets committed."""
        try:
            acks = [await producer.send(o.topic, o.value, key=o.key, partition=o.partition)
                    for _t, _e, _o, result in decided for o in result.outputs]
            await asyncio.gather(*acks)  # 1. every output is on the broker
            sent = [await send_changelog(producer, self.stages[t.stage].changelog,
                                         t.partition, result.writes)
                    for t, _e, _o, result in decided]
            lasts = [await last_offset(s) for s in sent]  # 2. and the state
        except KafkaError as exc:
            for task_id, epoch, _offsets, _result in decided:
                self.control.rewind(task_id, epoch, "send_failed", exc)
            return
        committed: dict[TopicPartition, int] = {}
        for (task_id, epoch, offsets, result), last in zip(decided, lasts, strict=True):
            if self.core.processed(task_id, epoch, offsets):
                self.stores[task_id].write(result.writes, last)  # 3. the local store
                committed.update(offsets)
        try:
            await consumer.commit(committed)  # 4. then the offsets
            trace_commit(self.core.generation, committed)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # the changelog carries the offsets too: a new owner resumes after this batch
            log.warning("offset commit failed (rebalance?); the changelog has them",
                        extra={"error": repr(exc)})
