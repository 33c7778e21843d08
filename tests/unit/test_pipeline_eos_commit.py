"""The exactly-once commit (router/worker/pipeline/eos_commit.py) with fake producers (no
broker), through the processor's loop: a committed batch is one transaction in order, then
the store; the offsets wait for the produce acks; records fetched while a task's commit is in
flight wait for its outcome. The real broker runs in tests/integration/test_exactly_once.py."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import TopicPartition

from router.worker.pipeline.core import LEADS, TaskId
from tests.unit.pipeline_fakes import (
    HANDLED,
    TOPIC,
    TP,
    FakeProducer,
    Meta,
    Rec,
    process,
    processor,
)

OTHER = TopicPartition("t.routing-input", 0)  # another task's input (the routing stage's)

# ---- through the processor's loop ----------------------------------------------------------


async def test_committed_batch_is_one_transaction_in_order_then_the_store() -> None:
    producer = FakeProducer()
    p, store, _ = processor(producer)
    await process(p, {TP: [Rec(5), Rec(6)]})
    assert producer.calls == ["begin", "send t.out", "changelog t.changelog[0] 2",
                              "offsets 7 leadrouter", "commit"]
    assert store.get(b"L-1") == b"state@6"
    assert store.input_offsets == {TOPIC: 7}
    assert p.core.tasks[TaskId(LEADS, 0)].positions[TP] == 7


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
    assert [r.offset for r in p.eos.held[TP]] == [7]
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
    assert p.eos.held == {} and not p.eos.inflight
    assert p.consumer.seeks[-1] == (TP, 5)  # type: ignore[attr-defined]
    assert store.get(b"L-1") is None

