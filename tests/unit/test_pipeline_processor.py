"""The processor's transaction outcomes with an injected fake producer and consumer (no
broker): a committed batch writes the store and advances; an aborted one writes nothing and
seeks back; a fenced one abandons the batch and drops the task's state. The real broker runs
in tests/integration/test_exactly_once.py."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaTimeoutError, ProducerFenced
from aiokafka.structs import TopicPartition

from router.service.qualifier import Output, Record
from router.settings import Settings
from router.worker.pipeline.assignor import CoPartitionedAssignor
from router.worker.pipeline.core import LEADS, Phase, TaskId
from router.worker.pipeline.processor import PartitionProcessor, Stage, TaskResult
from router.worker.pipeline.store import INPUT_OFFSETS, MemoryStore, PartitionStore

TOPIC = "t.touchpoints"
TP = TopicPartition(TOPIC, 0)


class Meta:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []

    def append(self, key: bytes, value: bytes | None, timestamp: None) -> object:
        self.records.append((key, value))
        return object()


class FakeProducer:
    def __init__(self, fail_commit: BaseException | None = None,
                 fail_abort: bool = False) -> None:
        self.fail_commit = fail_commit
        self.fail_abort = fail_abort
        self.calls: list[str] = []
        self.stopped = False

    async def begin_transaction(self) -> None:
        self.calls.append("begin")

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   partition: int | None = None) -> asyncio.Future[Meta]:
        self.calls.append(f"send {topic}")
        future: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        future.set_result(Meta(0))
        return future

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int
                         ) -> asyncio.Future[Meta]:
        self.calls.append(f"changelog {topic}[{partition}] {len(batch.records)}")
        future: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        future.set_result(Meta(100))
        return future

    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int],
                                          group_id: str) -> None:
        self.calls.append(f"offsets {offsets[TP]} {group_id}")

    async def commit_transaction(self) -> None:
        self.calls.append("commit")
        if self.fail_commit is not None:
            raise self.fail_commit

    async def abort_transaction(self) -> None:
        self.calls.append("abort")
        if self.fail_abort:
            raise KafkaTimeoutError()

    async def stop(self) -> None:
        self.stopped = True


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.paused: set[TopicPartition] = set()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)


class Rec:
    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = TOPIC, 0, offset
        self.key, self.value = b"L-1", b"{}"


def handle(partition: int, records: list[Record], store: PartitionStore, now: Any
           ) -> TaskResult:
    return TaskResult([Output("t.out", b"L-1", b"x")], [(b"L-1", b"state")])


def processor(producer: FakeProducer) -> tuple[PartitionProcessor, MemoryStore, list[int]]:
    forgotten: list[int] = []
    stage = Stage(LEADS, (TOPIC,), "t.changelog", "lead-state", handle, 1,
                  forget=forgotten.append)
    p = PartitionProcessor(Settings(), [stage], exactly_once=True, read_committed=True,
                           assignor=CoPartitionedAssignor("http://x", [TOPIC], "t.routing"))
    p._consumer = FakeConsumer()  # type: ignore[assignment]
    p.core.assign([TP], generation=1)
    task = p.core.tasks[TaskId(LEADS, 0)]
    p.core.activate(task.id, task.epoch, {TP: 5})
    store = MemoryStore()
    p.stores[task.id] = store
    p.producers[task.id] = producer  # type: ignore[assignment]
    return p, store, forgotten


async def test_committed_batch_is_one_transaction_in_order_then_the_store() -> None:
    producer = FakeProducer()
    p, store, _ = processor(producer)
    await p._process({TP: [Rec(5), Rec(6)]})  # type: ignore[dict-item]
    assert producer.calls == ["begin", "send t.out", "changelog t.changelog[0] 2",
                              "offsets 7 leadrouter", "commit"]
    assert store.get(b"L-1") == b"state"
    assert store.input_offsets == {TOPIC: 7}
    assert p.core.tasks[TaskId(LEADS, 0)].positions[TP] == 7


async def test_aborted_batch_leaves_no_trace_and_is_fetched_again() -> None:
    producer = FakeProducer(fail_commit=KafkaTimeoutError())
    p, store, forgotten = processor(producer)
    await p._process({TP: [Rec(5), Rec(6)]})  # type: ignore[dict-item]
    assert producer.calls[-2:] == ["commit", "abort"]
    assert store.get(b"L-1") is None and INPUT_OFFSETS not in store._data
    task = p.core.tasks[TaskId(LEADS, 0)]
    assert task.phase is Phase.ACTIVE and task.positions[TP] == 5
    assert p.consumer.seeks == [(TP, 5)]  # type: ignore[attr-defined]
    assert forgotten == [0]  # derived in-memory state (the routing stage's) is reloaded
    assert p.aborted["aborted"] == 1


async def test_fenced_producer_abandons_the_batch_and_drops_the_state() -> None:
    producer = FakeProducer(fail_commit=ProducerFenced())
    p, store, forgotten = processor(producer)
    await p._process({TP: [Rec(5), Rec(6)]})  # type: ignore[dict-item]
    task = p.core.tasks[TaskId(LEADS, 0)]
    assert task.phase is Phase.INITIALISING  # restored again before anything else
    assert TaskId(LEADS, 0) not in p.stores and TaskId(LEADS, 0) not in p.producers
    assert producer.stopped and store.get(b"L-1") is None
    assert TP in p.consumer.paused  # type: ignore[attr-defined]
    assert forgotten == [0]
    assert p.aborted["fenced"] == 1
    # and not at once: the rebalance that made this worker a zombie comes first
    assert p._retry_at[task.id] > 0


async def test_commit_with_unknown_outcome_reinitialises() -> None:
    """Neither committed nor (provably) aborted: restore from what the broker has."""
    producer = FakeProducer(fail_commit=KafkaTimeoutError(), fail_abort=True)
    p, store, _ = processor(producer)
    await p._process({TP: [Rec(5)]})  # type: ignore[dict-item]
    assert p.core.tasks[TaskId(LEADS, 0)].phase is Phase.INITIALISING
    assert p.aborted["commit_unknown"] == 1 and store.get(b"L-1") is None
