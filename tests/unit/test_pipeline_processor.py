"""What the processor does when a batch was not committed (its rewind and abandon, the
commits' TaskControl), with an injected fake producer and consumer (no broker): an aborted
batch writes nothing and seeks back; a fenced one abandons the batch and drops the task's
state; one with an unknown outcome initialises the task again. The commit protocols
themselves: test_pipeline_eos_commit.py, test_pipeline_alo_commit.py; the real broker runs in
tests/integration/test_exactly_once.py."""

from __future__ import annotations

from aiokafka.errors import KafkaTimeoutError, ProducerFenced

from router.worker.pipeline.core import LEADS, Phase, TaskId
from router.worker.pipeline.store import INPUT_OFFSETS
from tests.unit.pipeline_fakes import TP, FakeProducer, Rec, process, processor


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
