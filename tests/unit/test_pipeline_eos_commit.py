"""The exactly-once commit (router/worker/pipeline/eos_commit.py) with fake producers (no
broker): a committed batch is one transaction in order, then the store; the offsets wait for
the produce acks; a failed transaction's outcome goes to the processor's TaskControl (rewind
when provably aborted, abandon when fenced or unknown) and never reaches the store; records
fetched while a task's commit is in flight wait for its outcome. The first tests drive it
through the processor's loop, the others call it directly. The real broker runs in
tests/integration/test_exactly_once.py."""

from __future__ import annotations

import asyncio

from aiokafka.errors import InvalidProducerEpoch, KafkaTimeoutError, ProducerFenced
from aiokafka.structs import TopicPartition

from router.records import Output, StageResult
from router.worker.pipeline.core import LEADS, ROUTING, Ownership, TaskId
from router.worker.pipeline.eos_commit import ExactlyOnceCommits
from router.worker.pipeline.store import INPUT_OFFSETS, PartitionStore, encode_offsets
from router.worker.pipeline.txn_tuning import TxnTuning
from tests.unit.pipeline_fakes import (
    HANDLED,
    TASK,
    TOPIC,
    TP,
    FakeControl,
    FakeProducer,
    Meta,
    Rec,
    RecordingStore,
    active_core,
    process,
    processor,
    stage,
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


# ---- the commit on its own -----------------------------------------------------------------


def commits(producer: FakeProducer, core: Ownership | None = None,
            tuning: TxnTuning | None = None
            ) -> tuple[ExactlyOnceCommits, RecordingStore, FakeControl]:
    store = RecordingStore(producer.calls)
    control = FakeControl()
    stores: dict[TaskId, PartitionStore] = {TASK: store}
    eos = ExactlyOnceCommits(core or active_core(), {LEADS: stage()}, stores,
                             {TASK: producer},  # type: ignore[dict-item]
                             group_id="g", tuning=tuning or TxnTuning(), control=control)
    return eos, store, control


def decided(epoch: int, next_offset: int = 7) -> StageResult:
    return StageResult([Output("t.out", b"L-1", b"x"), Output("t.sql", b"L-1", b"y", 3)],
                      [(b"L-1", b"state"), (INPUT_OFFSETS, encode_offsets({TOPIC: next_offset}))])


async def test_transaction_order_then_the_store_at_the_last_changelog_offset() -> None:
    producer = FakeProducer()
    eos, store, control = commits(producer)
    epoch = eos.core.tasks[TASK].epoch
    assert await eos.transact(TASK, epoch, {TP: 7}, decided(epoch)) is True
    assert producer.calls == ["begin", "send t.out", "send t.sql", "changelog t.changelog[0] 2",
                              "offsets 7 g", "commit", "store @101"]
    assert store.get(b"L-1") == b"state" and store.input_offsets == {TOPIC: 7}
    assert eos.core.tasks[TASK].positions[TP] == 7
    assert control.rewound == [] and control.abandoned == []


async def test_without_acks_before_offsets_the_offsets_do_not_wait_for_the_acks() -> None:
    producer = FakeProducer()
    producer.ack = asyncio.get_running_loop().create_future()  # never acked before commit
    eos, _store, _ = commits(producer, tuning=TxnTuning(acks_before_offsets=False))
    epoch = eos.core.tasks[TASK].epoch
    commit = asyncio.create_task(eos.transact(TASK, epoch, {TP: 7}, decided(epoch)))
    await asyncio.sleep(0.01)
    # the outputs are still unacknowledged here: nothing before the commit waited for them
    assert producer.calls[-3:] == ["offsets 7 g", "commit", "store @101"]
    assert not producer.ack.done() and await commit is True


async def test_fenced_is_abandoned_until_the_rebalance_and_never_stored() -> None:
    for fenced in (ProducerFenced(), InvalidProducerEpoch()):
        producer = FakeProducer(fail_commit=fenced)
        eos, store, control = commits(producer)
        epoch = eos.core.tasks[TASK].epoch
        assert await eos.transact(TASK, epoch, {TP: 7}, decided(epoch)) is False
        assert control.abandoned == [(TASK, epoch, "fenced", True)] and control.rewound == []
        assert "abort" not in producer.calls  # a fenced producer cannot abort
        assert not any(c.startswith("store") for c in producer.calls)
        assert store.get(b"L-1") is None and eos.core.tasks[TASK].positions[TP] == 5


async def test_aborted_is_rewound_and_unknown_is_abandoned() -> None:
    producer = FakeProducer(fail_commit=KafkaTimeoutError())
    eos, store, control = commits(producer)
    epoch = eos.core.tasks[TASK].epoch
    assert await eos.transact(TASK, epoch, {TP: 7}, decided(epoch)) is False
    assert producer.calls[-2:] == ["commit", "abort"]
    assert control.rewound == [(TASK, epoch, "aborted")] and control.abandoned == []
    assert store.get(b"L-1") is None and eos.core.tasks[TASK].positions[TP] == 5

    producer = FakeProducer(fail_commit=KafkaTimeoutError(), fail_abort=True)
    eos, store, control = commits(producer)
    epoch = eos.core.tasks[TASK].epoch
    assert await eos.transact(TASK, epoch, {TP: 7}, decided(epoch)) is False
    assert control.abandoned == [(TASK, epoch, "commit_unknown", False)]
    assert control.rewound == [] and store.get(b"L-1") is None


async def test_a_commit_for_a_task_that_moved_on_is_not_applied() -> None:
    """Committed on the broker, but the task was reset meanwhile: its store is not written
    (it is restored from the changelog, which has the batch) and it reports not applied."""
    producer = FakeProducer()
    eos, store, _control = commits(producer)
    epoch = eos.core.tasks[TASK].epoch
    assert eos.core.reset(TASK, epoch)
    assert await eos.transact(TASK, epoch, {TP: 7}, decided(epoch)) is False
    assert producer.calls[-1] == "commit"  # committed, not stored
    assert store.get(b"L-1") is None


async def test_admit_holds_a_task_in_flight_and_drops_one_whose_commit_failed() -> None:
    core = Ownership({TOPIC: LEADS, OTHER.topic: ROUTING})
    core.assign([TP, OTHER], generation=1)
    for task in core.tasks.values():
        core.activate(task.id, task.epoch, {tp: 5 for tp in task.inputs})
    producer = FakeProducer()
    producer.commit_gate = asyncio.Event()
    eos, _store, control = commits(producer, core)
    epoch = core.tasks[TASK].epoch
    eos.start([(TASK, epoch, {TP: 7}, decided(epoch))])
    ready = eos.admit({TP: [Rec(7)], OTHER: [Rec(5)]})
    assert list(ready) == [OTHER]  # the other task is not held up
    assert [r.offset for r in eos.held[TP]] == [7]
    # the commit fails: what was held and what comes next for the task are dropped, it seeks
    producer.fail_commit = KafkaTimeoutError()
    producer.commit_gate.set()
    await asyncio.sleep(0.01)
    assert eos.admit({TP: [Rec(8)]}) == {}
    assert eos.held == {} and eos.inflight == {} and control.seeks == [TASK]
    await eos.drain()



async def test_max_concurrent_commits_runs_the_next_transaction_after_the_one_in_flight(
        ) -> None:
    """txn_tuning's max_concurrent_commits=1: a second transaction waits for a slot (it does
    not begin) until the first has committed; without the cap both begin at once."""
    for cap, overlapped in ((1, False), (0, True)):
        producer = FakeProducer()
        producer.commit_gate = asyncio.Event()
        eos, _store, _control = commits(producer, tuning=TxnTuning(max_concurrent_commits=cap))
        epoch = eos.core.tasks[TASK].epoch
        first = asyncio.create_task(eos.transact(TASK, epoch, {TP: 7}, decided(epoch)))
        second = asyncio.create_task(eos.transact(TASK, epoch, {TP: 8}, decided(epoch, 8)))
        await asyncio.sleep(0.01)
        assert (producer.calls.count("begin") == 2) is overlapped, (cap, producer.calls)
        producer.commit_gate.set()
        await asyncio.gather(first, second)
        assert producer.calls.count("commit") == 2
        begins = [i for i, call in enumerate(producer.calls) if call == "begin"]
        assert (begins[1] > producer.calls.index("commit")) is not overlapped
