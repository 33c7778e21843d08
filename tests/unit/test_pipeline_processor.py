"""What the processor does when a batch was not committed (its rewind and abandon, the
commits' TaskControl), with an injected fake producer and consumer (no broker): an aborted
batch writes nothing and seeks back; a fenced one abandons the batch and drops the task's
state; one with an unknown outcome initialises the task again. With one transaction per
worker the loop yields between tasks: a task reset or failed meanwhile is not decided. The
commit protocols themselves: test_pipeline_eos_commit.py, test_pipeline_alo_commit.py; the
real broker runs in tests/integration/test_exactly_once.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka.errors import KafkaTimeoutError, ProducerFenced
from aiokafka.structs import TopicPartition

from router.records import Output, Record, StageResult
from router.settings import Settings
from router.worker.pipeline.assignor import CoPartitionedAssignor
from router.worker.pipeline.core import LEADS, ROUTING, Phase, TaskId
from router.worker.pipeline.kip447 import GroupMetadata
from router.worker.pipeline.processor import PartitionProcessor
from router.worker.pipeline.stage import DirectInput, StageSpec
from router.worker.pipeline.store import INPUT_OFFSETS, MemoryStore, StateView
from router.worker.pipeline.txn_tuning import TxnTuning
from router.worker.pipeline.worker_txn import WorkerTransactions
from tests.unit.pipeline_fakes import (
    TOPIC,
    TP,
    FakeConsumer,
    FakeProducer,
    Rec,
    process,
    processor,
)

TP1 = TopicPartition(TOPIC, 1)
LEADS_0, LEADS_1 = TaskId(LEADS, 0), TaskId(LEADS, 1)


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


def two_task_worker(during_first: Callable[[PartitionProcessor], object]
                    ) -> tuple[PartitionProcessor, list[int]]:
    """A processor with one transaction per worker over leads 0 and 1 (faked producer);
    `during_first` runs while the loop yields after deciding leads 0's batch."""
    handled: list[int] = []

    def handle(partition: int, records: list[Record], store: StateView, now: Any
               ) -> StageResult:
        handled.append(partition)
        if partition == 0:
            asyncio.get_running_loop().call_soon(during_first, p)
        return StageResult([], [(b"L-1", b"state")])

    spec = StageSpec(LEADS, (TOPIC,), "t.changelog", "lead-state", handle, 2)
    p = PartitionProcessor(Settings(), [spec], exactly_once=True, read_committed=True,
                           assignor=CoPartitionedAssignor("http://x", [TOPIC], "t.routing"),
                           tuning=TxnTuning(worker_transactions=True))
    p._consumer = FakeConsumer()  # type: ignore[assignment]
    p.core.assign([TP, TP1], generation=1)
    for task in list(p.core.tasks.values()):
        p.core.activate(task.id, task.epoch, {task.inputs[0]: 5})
        p.stores[task.id] = MemoryStore()
    assert isinstance(p.eos, WorkerTransactions)
    p.eos.make_producer = lambda _id: FakeProducer()  # type: ignore[return-value]
    p.eos.group = lambda: GroupMetadata("leadrouter", generation_id=1, member_id="member-1")
    return p, handled


def rec(partition: int) -> Rec:
    r = Rec(5)
    r.partition = partition
    return r


async def test_a_task_reset_while_the_loop_yields_between_tasks_is_not_decided() -> None:
    p, handled = two_task_worker(lambda p: p.core.reset(LEADS_1, p.core.tasks[LEADS_1].epoch))
    await process(p, {TP: [rec(0)], TP1: [rec(1)]})
    assert handled == [0]  # leads 1's records are fetched again once it is initialised
    assert p.stores[LEADS_0].get(b"L-1") == b"state"


async def test_a_task_whose_transaction_failed_meanwhile_keeps_its_records_aside() -> None:
    def failed(p: PartitionProcessor) -> None:
        assert isinstance(p.eos, WorkerTransactions)
        p.eos._settling[LEADS_1] = []  # as _fail leaves it until the task is rewound

    p, handled = two_task_worker(failed)
    held = rec(1)
    await p._process({TP: [rec(0)], TP1: [held]})
    assert handled == [0] and p.eos.held == {TP1: [held]}
    await p._drain()


ROUTING_TOPIC = "t.routing"
RTP = TopicPartition(ROUTING_TOPIC, 0)
ROUTING_0 = TaskId(ROUTING, 0)


def direct_worker(*, direct_delivery: bool = True, routing_active: bool = True
                  ) -> tuple[PartitionProcessor, list[FakeProducer], list[list[Record]]]:
    """Leads 0, whose batch emits a route request to the routing topic, and the routing
    stage, which takes such records in process; one transaction per worker (faked)."""
    taken: list[list[Record]] = []

    def leads(partition: int, records: list[Record], store: StateView, now: Any
              ) -> StageResult:
        return StageResult([Output(ROUTING_TOPIC, b"L-1", b"route L-1"),
                            Output("t.transitions", b"L-1", b"lead.sql")], [(b"L-1", b"sql")])

    def routed(partition: int, records: list[Record], store: StateView, now: Any
               ) -> StageResult:
        taken.append(records)
        return StageResult([Output("t.assignments", b"L-1", b"lead.assigned")],
                           [(b"holding:L-1", b"R-1")])

    def from_topic(partition: int, records: list[Record], store: StateView, now: Any
                   ) -> StageResult:
        raise AssertionError("the routing topic's own records are not fetched here")

    specs = [StageSpec(LEADS, (TOPIC,), "t.changelog", "lead-state", leads, 1),
             StageSpec(ROUTING, (ROUTING_TOPIC,), "t.routing-changelog", "routing", from_topic,
                       1, direct=DirectInput(routed, lambda v: v + b" (applied)"))]
    p = PartitionProcessor(Settings(), specs, exactly_once=True, read_committed=True,
                           assignor=CoPartitionedAssignor("http://x", [TOPIC], ROUTING_TOPIC),
                           tuning=TxnTuning(worker_transactions=True,
                                            direct_delivery=direct_delivery))
    p._consumer = FakeConsumer()  # type: ignore[assignment]
    p.core.assign([TP, RTP], generation=1)
    for task in list(p.core.tasks.values()):
        if task.id == ROUTING_0 and not routing_active:
            continue  # still restoring its store
        p.core.activate(task.id, task.epoch, {task.inputs[0]: 5})
        p.stores[task.id] = MemoryStore()
    producers: list[FakeProducer] = []

    def make(_id: str) -> FakeProducer:
        producers.append(FakeProducer())
        return producers[-1]

    assert isinstance(p.eos, WorkerTransactions)
    p.eos.make_producer = make  # type: ignore[assignment]
    p.eos.group = lambda: GroupMetadata("leadrouter", generation_id=1, member_id="member-1")
    return p, producers, taken


async def test_a_route_request_is_applied_by_the_routing_owner_in_the_same_transaction(
        ) -> None:
    p, producers, taken = direct_worker()
    await process(p, {TP: [Rec(5)]})
    [producer] = producers
    assert [[(r.topic, r.offset, r.value) for r in rs] for rs in taken] == [
        [(ROUTING_TOPIC, -1, b"route L-1")]]
    # one transaction: the lead's outputs (its route marked applied), the assignment, both
    # changelogs, and the routing partition's offset unchanged, so a new owner's
    # require_stable OffsetFetch waits for this transaction before it restores
    assert producer.calls.count("begin") == 1 and producer.calls.count("commit") == 1
    assert (ROUTING_TOPIC, b"route L-1 (applied)") in producer.sent
    assert ("t.assignments", b"lead.assigned") in producer.sent
    assert f"offsets {[(ROUTING_TOPIC, 5), (TOPIC, 6)]}" in producer.calls
    routing_store = p.stores[ROUTING_0]
    assert routing_store.get(b"holding:L-1") == b"R-1"
    assert routing_store.input_offsets == {ROUTING_TOPIC: 5}
    assert p.core.tasks[ROUTING_0].positions[RTP] == 5


async def test_without_the_routing_partition_ready_the_route_goes_through_its_topic(
        ) -> None:
    for p, producers, taken in (direct_worker(direct_delivery=False),
                                direct_worker(routing_active=False)):
        await process(p, {TP: [Rec(5)]})
        assert taken == []
        assert (ROUTING_TOPIC, b"route L-1") in producers[0].sent
        assert f"offsets {6} leadrouter" in producers[0].calls
