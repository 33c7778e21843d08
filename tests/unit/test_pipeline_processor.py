"""The processor's transaction outcomes with an injected fake producer and consumer (no
broker): a committed batch writes the store and advances; an aborted one writes nothing and
seeks back; a fenced one abandons the batch and drops the task's state; records fetched while
a task's commit is in flight wait for its outcome. The real broker runs in
tests/integration/test_exactly_once.py."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaTimeoutError, ProducerFenced
from aiokafka.structs import TopicPartition

from router.records import Output, Record
from router.settings import Settings
from router.worker.pipeline.assignor import CoPartitionedAssignor
from router.worker.pipeline.core import LEADS, Phase, TaskId
from router.worker.pipeline.processor import PartitionProcessor, StageSpec, TaskResult
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
        self.ack: asyncio.Future[Meta] | None = None  # set: the outputs' ack waits for it
        self.commit_gate: asyncio.Event | None = None  # set: commit waits for it

    async def begin_transaction(self) -> None:
        self.calls.append("begin")

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   partition: int | None = None) -> asyncio.Future[Meta]:
        self.calls.append(f"send {topic}")
        if self.ack is not None:
            return self.ack
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
        if self.commit_gate is not None:
            await self.commit_gate.wait()
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
        self.timestamp = 0


HANDLED: list[tuple[list[int], bytes | None]] = []  # (offsets, the store's state) per batch


def handle(partition: int, records: list[Record], store: PartitionStore, now: Any
           ) -> TaskResult:
    HANDLED.append(([r.offset for r in records], store.get(b"L-1")))
    return TaskResult([Output("t.out", b"L-1", b"x")],
                      [(b"L-1", b"state@%d" % records[-1].offset)])


async def process(p: PartitionProcessor, fetched: dict[TopicPartition, list[Any]]) -> None:
    """One batch, then its commits (which run beside the loop) to their end."""
    await p._process(fetched)
    await p._drain()


def processor(producer: FakeProducer) -> tuple[PartitionProcessor, MemoryStore, list[int]]:
    forgotten: list[int] = []
    stage = StageSpec(LEADS, (TOPIC,), "t.changelog", "lead-state", handle, 1,
                  forget=forgotten.append)
    p = PartitionProcessor(Settings(), [stage], exactly_once=True, read_committed=True,
                           assignor=CoPartitionedAssignor("http://x", [TOPIC], "t.routing"))
    p._consumer = FakeConsumer()  # type: ignore[assignment]
    p.core.assign([TP], generation=1)
    task = p.core.tasks[TaskId(LEADS, 0)]
    p.core.activate(task.id, task.epoch, {TP: 5})
    store = MemoryStore()
    HANDLED.clear()
    p.stores[task.id] = store
    p.producers[task.id] = producer  # type: ignore[assignment]
    return p, store, forgotten


async def test_committed_batch_is_one_transaction_in_order_then_the_store() -> None:
    producer = FakeProducer()
    p, store, _ = processor(producer)
    await process(p, {TP: [Rec(5), Rec(6)]})
    assert producer.calls == ["begin", "send t.out", "changelog t.changelog[0] 2",
                              "offsets 7 leadrouter", "commit"]
    assert store.get(b"L-1") == b"state@6"
    assert store.input_offsets == {TOPIC: 7}
    assert p.core.tasks[TaskId(LEADS, 0)].positions[TP] == 7


async def test_aborted_batch_leaves_no_trace_and_is_fetched_again() -> None:
    producer = FakeProducer(fail_commit=KafkaTimeoutError())
    p, store, forgotten = processor(producer)
    await process(p, {TP: [Rec(5), Rec(6)]})
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
    await process(p, {TP: [Rec(5), Rec(6)]})
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
    await process(p, {TP: [Rec(5)]})
    assert p.core.tasks[TaskId(LEADS, 0)].phase is Phase.INITIALISING
    assert p.aborted["commit_unknown"] == 1 and store.get(b"L-1") is None


async def test_offsets_wait_for_the_produce_acks() -> None:
    """AddOffsetsToTxn only after the batch's produce acks (txn_tuning.py: the partition
    verification race that cost a 100 ms retry)."""
    producer = FakeProducer()
    producer.ack = asyncio.get_running_loop().create_future()
    p, _store, _ = processor(producer)
    await p._process({TP: [Rec(5)]})
    await asyncio.sleep(0.01)
    assert producer.calls[-1] == "changelog t.changelog[0] 2"  # offsets not sent yet
    producer.ack.set_result(Meta(0))
    await p._drain()
    assert producer.calls[-2:] == ["offsets 6 leadrouter", "commit"]


async def test_records_fetched_during_a_commit_wait_for_it_then_see_its_state() -> None:
    producer = FakeProducer()
    producer.commit_gate = asyncio.Event()
    p, store, _ = processor(producer)
    await p._process({TP: [Rec(5), Rec(6)]})
    await p._process({TP: [Rec(7)]})  # the first batch's commit is still in flight
    assert HANDLED == [([5, 6], None)]
    assert [r.offset for r in p._held[TP]] == [7]
    producer.commit_gate.set()
    await asyncio.sleep(0.01)
    await p._process({})  # the loop's next turn decides what was held
    await p._drain()
    assert HANDLED == [([5, 6], None), ([7], b"state@6")]
    assert store.get(b"L-1") == b"state@7"
    assert p.core.tasks[TaskId(LEADS, 0)].positions[TP] == 8


async def test_records_fetched_during_a_failed_commit_are_fetched_again() -> None:
    producer = FakeProducer(fail_commit=KafkaTimeoutError())
    producer.commit_gate = asyncio.Event()
    p, store, _ = processor(producer)
    await p._process({TP: [Rec(5), Rec(6)]})
    await p._process({TP: [Rec(7)]})
    producer.commit_gate.set()
    await asyncio.sleep(0.01)
    await p._process({})
    assert HANDLED == [([5, 6], None)]  # 7 was not decided on top of a batch that failed
    assert p._held == {} and not p._inflight
    assert p.consumer.seeks[-1] == (TP, 5)  # type: ignore[attr-defined]
    assert store.get(b"L-1") is None
