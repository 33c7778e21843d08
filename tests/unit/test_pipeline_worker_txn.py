"""One transaction per worker (router/worker/pipeline/worker_txn.py) with fake producers (no
broker): the tasks decided together commit in one transaction, each task's state only after
it; batches decided while a transaction commits join the next one, never a second one beside
it; a refused generation, an abort, an unknown outcome and a fenced producer each reach every
task of the transaction, and none reaches a store. The real broker runs in
tests/integration/test_exactly_once.py (both commit scopes) and test_kip447.py (the fencing)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka.errors import KafkaTimeoutError, ProducerFenced
from aiokafka.structs import TopicPartition

from router.records import Output, StageResult
from router.worker.pipeline.core import LEADS, ROUTING, Ownership, TaskId
from router.worker.pipeline.kip447 import GroupMetadata, StaleGeneration
from router.worker.pipeline.stage import Decision, StageSpec
from router.worker.pipeline.store import PartitionStore
from router.worker.pipeline.txn_tuning import TxnTuning
from router.worker.pipeline.worker_txn import WorkerTransactions, worker_transactional_id
from tests.unit.pipeline_fakes import TOPIC, TP, FakeControl, FakeProducer, RecordingStore, stage

ROUTING_TOPIC = "t.routing-input"
RTP = TopicPartition(ROUTING_TOPIC, 0)
LEADS_0, ROUTING_0 = TaskId(LEADS, 0), TaskId(ROUTING, 0)
GROUP = GroupMetadata("leadrouter", generation_id=3, member_id="member-1")


def routing_stage() -> StageSpec:
    base = stage()
    return StageSpec(ROUTING, (ROUTING_TOPIC,), "t.routing-changelog", "routing", base.handle, 1)


class Worker:
    """WorkerTransactions over two active tasks (leads 0, routing 0), each with its store."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.producers: list[FakeProducer] = []
        self.core = Ownership({TOPIC: LEADS, ROUTING_TOPIC: ROUTING})
        self.core.assign([TP, RTP], generation=3)
        for task in list(self.core.tasks.values()):
            self.core.activate(task.id, task.epoch, dict.fromkeys(task.inputs, 5))
        self.stores: dict[TaskId, PartitionStore] = {
            LEADS_0: RecordingStore(self.calls), ROUTING_0: RecordingStore(self.calls)}
        self.control = FakeControl()
        self.prepare: Callable[[FakeProducer], None] = lambda _producer: None
        self.txns = WorkerTransactions(
            self.core, {LEADS: stage(), ROUTING: routing_stage()}, self.stores,
            group_id="leadrouter", tuning=TxnTuning(worker_transactions=True),
            control=self.control, make_producer=self._make, transactional_id="app-worker-1",
            group=lambda: GROUP)

    def _make(self, transactional_id: str) -> FakeProducer:
        assert transactional_id == "app-worker-1"
        producer = FakeProducer(calls=self.calls)
        self.prepare(producer)
        self.producers.append(producer)
        return producer  # type: ignore[return-value]

    @property
    def producer(self) -> FakeProducer:
        return self.producers[-1]

    def decision(self, task_id: TaskId, offset: int) -> Decision:
        tp = TP if task_id == LEADS_0 else RTP
        epoch = self.core.tasks[task_id].epoch
        result = StageResult([Output(f"out.{task_id.stage}", b"k", b"v")],
                             [(b"k", b"%s@%d" % (task_id.stage.encode(), offset))])
        return (task_id, epoch, {tp: offset + 1}, result)


async def test_tasks_decided_together_commit_in_one_transaction_then_each_store() -> None:
    w = Worker()
    commits = w.txns.start([w.decision(LEADS_0, 5), w.decision(ROUTING_0, 9)])
    assert await asyncio.gather(*commits) == [True, True]
    assert w.calls == [
        "begin", "send out.leads", "changelog t.changelog[0] 1",
        "send out.routing", "changelog t.routing-changelog[0] 1",
        f"offsets {[(ROUTING_TOPIC, 10), (TOPIC, 6)]}", "commit", "store @100", "store @100"]
    assert w.stores[LEADS_0].get(b"k") == b"leads@5"
    assert w.stores[ROUTING_0].get(b"k") == b"routing@9"
    assert w.core.tasks[LEADS_0].positions[TP] == 6
    assert w.core.tasks[ROUTING_0].positions[RTP] == 10
    assert len(w.producers) == 1 and w.producer.started


async def test_batches_decided_during_a_commit_join_the_next_transaction() -> None:
    w = Worker()
    gate = asyncio.Event()
    w.prepare = lambda p: setattr(p, "commit_gate", gate)
    first = w.txns.start([w.decision(LEADS_0, 5)])
    await asyncio.sleep(0.01)
    second = w.txns.start([w.decision(ROUTING_0, 9)])  # the first has not committed yet
    await asyncio.sleep(0.01)
    assert w.calls.count("begin") == 1  # no second transaction beside the first
    gate.set()
    assert await asyncio.gather(*first, *second) == [True, True]
    assert w.calls.count("begin") == 2 and w.calls.count("commit") == 2
    assert w.calls.index("send out.routing") > w.calls.index("commit")


async def committed_with_records_held(
        ) -> tuple[Worker, list[asyncio.Task[bool]], list[asyncio.Task[bool]]]:
    """leads 0 commits; routing 0 is decided meanwhile; leads 0's next records wait (held);
    then leads 0's commit is let through."""
    w = Worker()
    gate = asyncio.Event()
    w.prepare = lambda p: setattr(p, "commit_gate", gate)
    first = w.txns.start([w.decision(LEADS_0, 5)])
    await asyncio.sleep(0.01)
    second = w.txns.start([w.decision(ROUTING_0, 9)])
    w.txns.held = {TP: ["the next record of leads 0"]}
    gate.set()
    return w, first, second


async def test_records_held_for_a_committed_task_join_the_transaction_waiting_to_begin(
        ) -> None:
    # once leads 0 has committed, its next batch joins routing's transaction, not a third one
    w, first, second = await committed_with_records_held()
    assert await asyncio.gather(*first) == [True]
    await asyncio.sleep(0.01)
    assert w.calls.count("begin") == 1  # routing's transaction waits for the loop
    assert w.txns.admit({}) == {TP: ["the next record of leads 0"]}
    third = w.txns.start([w.decision(LEADS_0, 6)])
    assert await asyncio.gather(*second, *third) == [True, True]
    assert w.calls.count("begin") == 2 and w.calls.count("commit") == 2
    assert w.calls.index("send out.routing") < w.calls.index("commit", w.calls.index("begin", 1))
    assert w.stores[LEADS_0].get(b"k") == b"leads@6"


async def test_a_transaction_waiting_for_the_loop_still_begins_when_drained() -> None:
    w, first, second = await committed_with_records_held()
    await asyncio.wait_for(w.txns.drain(), 5)  # a revocation: every commit settles
    assert [c.result() for c in (*first, *second)] == [True, True]
    assert w.txns.held == {} and w.calls.count("commit") == 2


async def test_a_refused_generation_aborts_and_rewinds_every_task() -> None:
    w = Worker()
    assert w.txns.start([]) == [] and not w.producers  # nothing decided: no transaction
    refused = StaleGeneration("ILLEGAL_GENERATION", "leadrouter", 22)
    w.prepare = lambda p: setattr(p, "fail_offsets", refused)
    commits = w.txns.start([w.decision(LEADS_0, 5), w.decision(ROUTING_0, 9)])
    assert await asyncio.gather(*commits) == [False, False]
    assert w.calls[-2:] == [f"offsets {[(ROUTING_TOPIC, 10), (TOPIC, 6)]}", "abort"]
    assert {(t, r) for t, _e, r in w.control.rewound} == {
        (LEADS_0, "stale_generation"), (ROUTING_0, "stale_generation")}
    assert not any(c.startswith("store") for c in w.calls)
    assert w.core.tasks[LEADS_0].positions[TP] == 5


async def test_an_unknown_outcome_replaces_the_producer_and_abandons_every_task() -> None:
    w = Worker()
    def failing(producer: FakeProducer) -> None:
        if not w.producers:  # the first producer's commit and abort fail
            producer.fail_commit, producer.fail_abort = KafkaTimeoutError(), True

    w.prepare = failing
    commits = w.txns.start([w.decision(LEADS_0, 5), w.decision(ROUTING_0, 9)])
    assert await asyncio.gather(*commits) == [False, False]
    assert w.producers[0].stopped
    # the new producer with the same transactional id settles the open transaction first
    assert len(w.producers) == 2 and w.producers[1].started
    assert {(t, r) for t, _e, r, _w in w.control.abandoned} == {
        (LEADS_0, "commit_unknown"), (ROUTING_0, "commit_unknown")}
    assert not any(c.startswith("store") for c in w.calls)


async def test_a_fenced_producer_abandons_every_task() -> None:
    w = Worker()
    w.prepare = lambda p: setattr(p, "fail_commit", ProducerFenced() if not w.producers else None)
    commits = w.txns.start([w.decision(LEADS_0, 5), w.decision(ROUTING_0, 9)])
    assert await asyncio.gather(*commits) == [False, False]
    assert w.producers[0].stopped and w.txns.producer is None
    assert {r for _t, _e, r, _w in w.control.abandoned} == {"fenced"}
    # the next batch gets a new producer
    assert await asyncio.gather(*w.txns.start([w.decision(LEADS_0, 5)])) == [True]
    assert len(w.producers) == 2 and w.stores[LEADS_0].get(b"k") == b"leads@5"


def test_transactional_ids_are_unique_per_worker_in_one_process() -> None:
    assert worker_transactional_id("app") != worker_transactional_id("app")
    assert worker_transactional_id("app").startswith("app-worker-")
