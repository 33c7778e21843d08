"""The at-least-once commit (router/worker/pipeline/alo_commit.py) with a fake producer and
consumer (no broker): outputs acked, then the changelog acked, then the local store, then the
offsets committed; a failed send rewinds every task of the batch and writes nothing; a failed
offset commit is only a warning (the changelog carries the offsets); a task that moved on is
neither stored nor committed. The last test drives it through the processor's loop."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import CommitFailedError, KafkaConnectionError
from aiokafka.structs import TopicPartition

from router.records import Output, StageResult
from router.worker.pipeline.alo_commit import AtLeastOnceCommits
from router.worker.pipeline.core import LEADS, ROUTING, Ownership, Phase, TaskId
from router.worker.pipeline.stage import Decision, StageSpec
from router.worker.pipeline.store import INPUT_OFFSETS, PartitionStore, encode_offsets
from tests.unit.pipeline_fakes import (
    TASK,
    TOPIC,
    TP,
    FakeConsumer,
    FakeControl,
    FakeProducer,
    Meta,
    Rec,
    RecordingStore,
    handle,
    process,
    processor,
    stage,
)

OTHER = TopicPartition("t.routing-input", 0)
ROUTING_TASK = TaskId(ROUTING, 0)


def commits(calls: list[str]
            ) -> tuple[AtLeastOnceCommits, dict[TaskId, RecordingStore], FakeControl]:
    core = Ownership({TOPIC: LEADS, OTHER.topic: ROUTING})
    core.assign([TP, OTHER], generation=1)
    for task in core.tasks.values():
        core.activate(task.id, task.epoch, {tp: 5 for tp in task.inputs})
    stores = {TASK: RecordingStore(calls), ROUTING_TASK: RecordingStore(calls)}
    control = FakeControl()
    stages = {LEADS: stage(),
              ROUTING: StageSpec(ROUTING, (OTHER.topic,), "t.routing-changelog", "routing",
                                 handle, 1)}
    shared: dict[TaskId, PartitionStore] = dict(stores)
    return AtLeastOnceCommits(core, stages, shared, control=control), stores, control


def decision(alo: AtLeastOnceCommits, task_id: TaskId, tp: TopicPartition,
             next_offset: int) -> Decision:
    epoch = alo.core.tasks[task_id].epoch
    result = StageResult([Output(f"out.{task_id.stage}", b"k", b"v")],
                        [(b"k", b"state"),
                         (INPUT_OFFSETS, encode_offsets({tp.topic: next_offset}))])
    return task_id, epoch, {tp: next_offset}, result


async def test_outputs_acked_then_changelog_then_store_then_offsets() -> None:
    calls: list[str] = []
    producer, consumer = FakeProducer(calls=calls), FakeConsumer(calls)
    alo, stores, control = commits(calls)
    batch = [decision(alo, TASK, TP, 7), decision(alo, ROUTING_TASK, OTHER, 6)]
    await alo.commit(batch, producer, consumer)  # type: ignore[arg-type]
    assert calls == ["send out.leads", "send out.routing",  # every output, acked, first
                     "changelog t.changelog[0] 2", "changelog t.routing-changelog[0] 2",
                     "store @101", "store @101",  # then each task's store
                     "commit offsets [6, 7]"]  # and only then the offsets, all at once
    assert consumer.committed == [{TP: 7, OTHER: 6}]
    assert stores[TASK].get(b"k") == b"state" and stores[TASK].input_offsets == {TOPIC: 7}
    assert alo.core.tasks[TASK].positions[TP] == 7
    assert alo.core.tasks[ROUTING_TASK].positions[OTHER] == 6
    assert control.rewound == []


async def test_the_changelog_waits_for_the_outputs_acks() -> None:
    calls: list[str] = []
    producer, consumer = FakeProducer(calls=calls), FakeConsumer(calls)
    producer.ack = asyncio.get_running_loop().create_future()
    alo, _stores, _ = commits(calls)
    batch = [decision(alo, TASK, TP, 7)]
    commit = asyncio.create_task(alo.commit(batch, producer, consumer))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert calls == ["send out.leads"]  # no state before what was published is on the broker
    producer.ack.set_result(Meta(0))
    await commit
    assert calls[1:] == ["changelog t.changelog[0] 2", "store @101", "commit offsets [7]"]


async def test_a_failed_send_rewinds_every_task_and_writes_nothing() -> None:
    calls: list[str] = []
    producer, consumer = FakeProducer(calls=calls), FakeConsumer(calls)
    producer.fail_send = KafkaConnectionError()
    alo, stores, control = commits(calls)
    batch = [decision(alo, TASK, TP, 7), decision(alo, ROUTING_TASK, OTHER, 6)]
    await alo.commit(batch, producer, consumer)  # type: ignore[arg-type]
    assert control.rewound == [(TASK, batch[0][1], "send_failed"),
                               (ROUTING_TASK, batch[1][1], "send_failed")]
    assert calls == ["send out.leads"] and consumer.committed == []
    assert all(s.get(b"k") is None for s in stores.values())
    assert alo.core.tasks[TASK].positions[TP] == 5


async def test_a_failed_offset_commit_keeps_the_state_and_warns(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    producer, consumer = FakeProducer(calls=calls), FakeConsumer(calls)
    consumer.fail_commit = CommitFailedError()
    alo, stores, control = commits(calls)
    with caplog.at_level(logging.WARNING, "router.worker.pipeline.processor"):
        batch = [decision(alo, TASK, TP, 7)]
        await alo.commit(batch, producer, consumer)  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        "offset commit failed (rebalance?); the changelog has them"]
    assert stores[TASK].get(b"k") == b"state" and stores[TASK].input_offsets == {TOPIC: 7}
    assert alo.core.tasks[TASK].positions[TP] == 7 and control.rewound == []


async def test_a_task_that_moved_on_is_neither_stored_nor_committed() -> None:
    calls: list[str] = []
    producer, consumer = FakeProducer(calls=calls), FakeConsumer(calls)
    alo, stores, _ = commits(calls)
    batch = [decision(alo, TASK, TP, 7), decision(alo, ROUTING_TASK, OTHER, 6)]
    assert alo.core.reset(TASK, batch[0][1])  # e.g. abandoned while the sends were acked
    await alo.commit(batch, producer, consumer)  # type: ignore[arg-type]
    assert stores[TASK].get(b"k") is None and stores[ROUTING_TASK].get(b"k") == b"state"
    assert consumer.committed == [{OTHER: 6}]


async def test_through_the_processor_the_batch_is_stored_and_committed() -> None:
    producer = FakeProducer()
    p, store, _ = processor(producer, exactly_once=False)
    await process(p, {TP: [Rec(5), Rec(6)]})
    assert producer.calls == ["send t.out", "changelog t.changelog[0] 2"]  # no transaction
    assert p.consumer.committed == [{TP: 7}]  # type: ignore[attr-defined]
    assert store.get(b"L-1") == b"state@6" and store.input_offsets == {TOPIC: 7}
    assert p.core.tasks[TASK].positions[TP] == 7 and not p.eos.inflight


async def test_through_the_processor_a_failed_send_is_processed_again() -> None:
    producer = FakeProducer()
    producer.fail_send = KafkaConnectionError()
    p, store, forgotten = processor(producer, exactly_once=False)
    await process(p, {TP: [Rec(5), Rec(6)]})
    task = p.core.tasks[TASK]
    assert task.phase is Phase.ACTIVE and task.positions[TP] == 5
    assert p.consumer.seeks == [(TP, 5)]  # type: ignore[attr-defined]
    assert forgotten == [0] and p.aborted["send_failed"] == 1
    assert store.get(b"L-1") is None and p.consumer.committed == []  # type: ignore[attr-defined]
