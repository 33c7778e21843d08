"""Fakes of the aiokafka producer and consumer for the processor's unit tests (no broker):
they record the calls the commit protocols make, in order, and can hold an ack or a commit
back or fail it. Shared by test_pipeline_processor.py, test_pipeline_eos_commit.py and
test_pipeline_alo_commit.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import TopicPartition

from router.records import Output, Record, StageResult
from router.settings import Settings
from router.worker.pipeline.assignor import CoPartitionedAssignor
from router.worker.pipeline.core import LEADS, Ownership, Task, TaskId
from router.worker.pipeline.processor import PartitionProcessor
from router.worker.pipeline.stage import StageSpec
from router.worker.pipeline.store import MemoryStore, PartitionStore
from router.worker.pipeline.txn_tuning import TxnTuning

TOPIC = "t.touchpoints"
TP = TopicPartition(TOPIC, 0)
TASK = TaskId(LEADS, 0)


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
                 fail_abort: bool = False, calls: list[str] | None = None) -> None:
        self.fail_commit = fail_commit
        self.fail_abort = fail_abort
        self.fail_send: BaseException | None = None  # set: send raises it
        self.fail_offsets: BaseException | None = None  # set: send_offsets raises it
        self.started = False
        self.calls: list[str] = [] if calls is None else calls
        self.stopped = False
        self.ack: asyncio.Future[Meta] | None = None  # set: the outputs' ack waits for it
        self.commit_gate: asyncio.Event | None = None  # set: commit waits for it
        self.start_gate: asyncio.Event | None = None  # set: start waits for it
        self.fail_commit_once: BaseException | None = None  # set: the next commit raises it
        self.begun = 0  # transactions begun on this producer
        self.sent: list[tuple[str, bytes]] = []  # (topic, value) of each output sent

    async def begin_transaction(self) -> None:
        self.calls.append("begin")
        self.begun += 1

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   partition: int | None = None) -> asyncio.Future[Meta]:
        self.calls.append(f"send {topic}")
        self.sent.append((topic, value))
        if self.fail_send is not None:
            raise self.fail_send
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
        if set(offsets) == {TP}:
            self.calls.append(f"offsets {offsets[TP]} {group_id}")
        else:
            self.calls.append(f"offsets {sorted((tp.topic, o) for tp, o in offsets.items())}")
        if self.fail_offsets is not None:
            raise self.fail_offsets

    async def commit_transaction(self) -> None:
        if self.commit_gate is not None:
            await self.commit_gate.wait()
        self.calls.append("commit")
        if self.fail_commit is not None:
            raise self.fail_commit
        if self.fail_commit_once is not None:
            failure, self.fail_commit_once = self.fail_commit_once, None
            raise failure

    async def abort_transaction(self) -> None:
        self.calls.append("abort")
        if self.fail_abort:
            raise KafkaTimeoutError()

    async def start(self) -> None:
        if self.start_gate is not None:
            await self.start_gate.wait()
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


class FakeConsumer:
    def __init__(self, calls: list[str] | None = None) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.paused: set[TopicPartition] = set()
        self.calls: list[str] = [] if calls is None else calls
        self.committed: list[dict[TopicPartition, int]] = []
        self.fail_commit: BaseException | None = None  # set: commit raises it

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.calls.append(f"commit offsets {sorted(offsets.values())}")
        if self.fail_commit is not None:
            raise self.fail_commit
        self.committed.append(dict(offsets))


class RecordingStore(MemoryStore):
    """A memory store that notes each write in a shared call log (the commit order)."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    def write(self, writes: Iterable[tuple[bytes, bytes | None]],
              changelog_offset: int | None) -> None:
        self.calls.append(f"store @{changelog_offset}")
        super().write(writes, changelog_offset)


class FakeControl:
    """The processor's side of a batch that was not committed (commit.TaskControl), noted."""

    def __init__(self) -> None:
        self.seeks: list[TaskId] = []
        self.rewound: list[tuple[TaskId, int, str]] = []
        self.abandoned: list[tuple[TaskId, int, str, bool]] = []

    def seek(self, task: Task) -> None:
        self.seeks.append(task.id)

    def rewind(self, task_id: TaskId, epoch: int, reason: str, exc: BaseException) -> None:
        self.rewound.append((task_id, epoch, reason))

    async def abandon(self, task_id: TaskId, epoch: int, reason: str, exc: BaseException,
                      wait_for_rebalance: bool = False) -> None:
        self.abandoned.append((task_id, epoch, reason, wait_for_rebalance))


class Rec:
    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = TOPIC, 0, offset
        self.key, self.value = b"L-1", b"{}"
        self.timestamp = 0


HANDLED: list[tuple[list[int], bytes | None]] = []  # (offsets, the store's state) per batch


def handle(partition: int, records: list[Record], store: PartitionStore, now: Any
           ) -> StageResult:
    HANDLED.append(([r.offset for r in records], store.get(b"L-1")))
    return StageResult([Output("t.out", b"L-1", b"x")],
                      [(b"L-1", b"state@%d" % records[-1].offset)])


def stage(forgotten: list[int] | None = None) -> StageSpec:
    return StageSpec(LEADS, (TOPIC,), "t.changelog", "lead-state", handle, 1,
                     forget=(forgotten if forgotten is not None else []).append)


def active_core(position: int = 5) -> Ownership:
    """One active leads task on partition 0 of TOPIC, resuming at `position`."""
    core = Ownership({TOPIC: LEADS})
    core.assign([TP], generation=1)
    task = core.tasks[TASK]
    core.activate(task.id, task.epoch, {TP: position})
    return core


async def process(p: PartitionProcessor, fetched: dict[TopicPartition, list[Any]]) -> None:
    """One batch, then its commits (which run beside the loop) to their end."""
    await p._process(fetched)
    await p._drain()


def processor(producer: FakeProducer, *, exactly_once: bool = True
              ) -> tuple[PartitionProcessor, MemoryStore, list[int]]:
    """A processor with one active task (leads 0, at offset 5), its store and producer (the
    task's transactional one exactly-once, the shared one at-least-once) faked."""
    forgotten: list[int] = []
    p = PartitionProcessor(Settings(), [stage(forgotten)], exactly_once=exactly_once,
                           read_committed=exactly_once,
                           assignor=CoPartitionedAssignor("http://x", [TOPIC], "t.routing"),
                           tuning=TxnTuning(worker_transactions=False))
    p._consumer = FakeConsumer()  # type: ignore[assignment]
    p.core.assign([TP], generation=1)
    task = p.core.tasks[TASK]
    p.core.activate(task.id, task.epoch, {TP: 5})
    store = MemoryStore()
    HANDLED.clear()
    p.stores[task.id] = store
    if exactly_once:
        p.producers[task.id] = producer  # type: ignore[assignment]
    else:
        p._producer = producer  # type: ignore[assignment]
    return p, store, forgotten
