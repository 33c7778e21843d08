"""One transaction per worker (router/worker/pipeline/worker_txn.py) with fake producers (no
broker): the tasks decided together commit in one transaction, each task's state only after
it; batches decided while a transaction commits join the next one, never a second one beside
it, and read the writes not yet committed (a failed transaction drops them); a refused
generation, an abort, an unknown outcome and a fenced producer each reach every task of the
transaction, and none reaches a store. The real broker runs in
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


def first_commit_fails(w: Worker) -> asyncio.Event:
    """The first transaction's commit waits for the gate, then fails once (the producer stays
    usable): the batches decided meanwhile join the next one."""
    gate = asyncio.Event()

    def prepare(producer: FakeProducer) -> None:
        producer.commit_gate, producer.fail_commit_once = gate, KafkaTimeoutError()

    w.prepare = prepare
    return gate


def routing_stage(forgotten: list[int] | None = None) -> StageSpec:
    base = stage()
    return StageSpec(ROUTING, (ROUTING_TOPIC,), "t.routing-changelog", "routing", base.handle, 1,
                     forget=(forgotten if forgotten is not None else []).append)


class Worker:
    """WorkerTransactions over two active tasks (leads 0, routing 0), each with its store."""

    def __init__(self, producers: int = 1) -> None:
        self.calls: list[str] = []
        self.ids: list[str] = []
        self.producers: list[FakeProducer] = []
        self.core = Ownership({TOPIC: LEADS, ROUTING_TOPIC: ROUTING})
        self.core.assign([TP, RTP], generation=3)
        for task in list(self.core.tasks.values()):
            self.core.activate(task.id, task.epoch, dict.fromkeys(task.inputs, 5))
        self.stores: dict[TaskId, PartitionStore] = {
            LEADS_0: RecordingStore(self.calls), ROUTING_0: RecordingStore(self.calls)}
        self.control = FakeControl()
        self.prepare: Callable[[FakeProducer], None] = lambda _producer: None
        self.routing_forgotten: list[int] = []  # the routing stage's in-memory state dropped
        self.txns = WorkerTransactions(
            self.core, {LEADS: stage(), ROUTING: routing_stage(self.routing_forgotten)},
            self.stores,
            group_id="leadrouter",
            tuning=TxnTuning(worker_transactions=True, worker_producers=producers),
            control=self.control, make_producer=self._make, transactional_id="app-worker-1",
            group=lambda: GROUP)

    def _make(self, transactional_id: str) -> FakeProducer:
        assert transactional_id.startswith("app-worker-1")
        self.ids.append(transactional_id)
        producer = FakeProducer(calls=self.calls)
        self.prepare(producer)
        self.producers.append(producer)
        return producer  # type: ignore[return-value]

    @property
    def producer(self) -> FakeProducer:
        return self.producers[-1]

    def commit(self, decided: list[Decision], records: int = 0) -> list[asyncio.Future[bool]]:
        """As the loop hands a batch over: the decisions, then a transaction begins."""
        commits = self.txns.start(decided, records)
        self.txns.flush()
        return commits

    def decision(self, task_id: TaskId, offset: int) -> Decision:
        tp = TP if task_id == LEADS_0 else RTP
        epoch = self.core.tasks[task_id].epoch
        result = StageResult([Output(f"out.{task_id.stage}", b"k", b"v")],
                             [(b"k", b"%s@%d" % (task_id.stage.encode(), offset))])
        return (task_id, epoch, {tp: offset + 1}, result)


async def test_tasks_decided_together_commit_in_one_transaction_then_each_store() -> None:
    w = Worker()
    commits = w.commit([w.decision(LEADS_0, 5), w.decision(ROUTING_0, 9)])
    assert await asyncio.gather(*commits) == [True, True]
    assert w.calls == [
        "begin", "send out.leads", "send out.routing", "changelog t.changelog[0] 1",
        "changelog t.routing-changelog[0] 1",
        f"offsets {[(ROUTING_TOPIC, 10), (TOPIC, 6)]}", "commit", "store @100", "store @100"]
    assert w.stores[LEADS_0].get(b"k") == b"leads@5"
    assert w.stores[ROUTING_0].get(b"k") == b"routing@9"
    assert w.core.tasks[LEADS_0].positions[TP] == 6
    assert w.core.tasks[ROUTING_0].positions[RTP] == 10
    assert len(w.producers) == 1 and w.producer.started


async def test_a_tasks_batches_in_one_transaction_send_their_changelog_as_one() -> None:
    w = Worker()
    first = w.txns.start([w.decision(LEADS_0, 5)], records=1)
    second = w.txns.start([w.decision(LEADS_0, 6)], records=1)  # read the first's writes
    w.txns.flush()
    assert await asyncio.gather(*first, *second) == [True, True]
    # aiokafka queues a partition's second record batch only once the first is sent: one
    # send, and each batch's store write at its own last changelog record (base offset 100)
    assert w.calls == ["begin", "send out.leads", "send out.leads", "changelog t.changelog[0] 2",
                       "offsets 7 leadrouter", "commit", "store @100", "store @101"]
    assert w.stores[LEADS_0].get(b"k") == b"leads@6"


async def test_batches_decided_during_a_commit_join_the_next_transaction() -> None:
    w = Worker()
    gate = asyncio.Event()
    w.prepare = lambda p: setattr(p, "commit_gate", gate)
    first = w.commit([w.decision(LEADS_0, 5)])
    await asyncio.sleep(0.01)
    second = w.commit([w.decision(ROUTING_0, 9)])  # the first has not committed yet
    await asyncio.sleep(0.01)
    assert w.calls.count("begin") == 1  # no second transaction beside the first
    gate.set()
    assert await asyncio.gather(*first, *second) == [True, True]
    assert w.calls.count("begin") == 2 and w.calls.count("commit") == 2
    assert w.calls.index("send out.routing") > w.calls.index("commit")


async def test_a_task_decided_during_its_own_commit_reads_its_pending_writes() -> None:
    w = Worker()
    gate = asyncio.Event()
    w.prepare = lambda p: setattr(p, "commit_gate", gate)
    first = w.commit([w.decision(LEADS_0, 5)], records=1)
    await asyncio.sleep(0.01)
    task = w.core.tasks[LEADS_0]
    store = w.stores[LEADS_0]
    # not committed: the store has nothing, the task's next batch sees the pending write
    assert store.get(b"k") is None
    assert w.txns.view(LEADS_0, store).get(b"k") == b"leads@5"
    assert task.positions[TP] == 5 and w.txns.positions(task)[TP] == 6
    assert w.txns.admit({TP: ["the next record of leads 0"]}) == {
        TP: ["the next record of leads 0"]}  # decided now, not held for the commit
    second = w.commit([w.decision(LEADS_0, 6)], records=1)
    assert w.txns.view(LEADS_0, store).get(b"k") == b"leads@6"
    await asyncio.sleep(0.01)
    assert w.calls.count("begin") == 1  # it joins the next transaction, not one beside
    gate.set()
    assert await asyncio.gather(*first, *second) == [True, True]
    assert w.calls.count("begin") == 2 and w.calls.count("commit") == 2
    assert store.get(b"k") == b"leads@6" and task.positions[TP] == 7
    assert w.txns.view(LEADS_0, store) is store  # nothing pending any more


async def test_a_failed_transaction_drops_the_later_batches_decided_on_it() -> None:
    w = Worker()
    gate = first_commit_fails(w)
    first = w.commit([w.decision(LEADS_0, 5)])
    await asyncio.sleep(0.01)
    # decided on leads 0's uncommitted write; routing 0 on its own store
    later = w.commit([w.decision(LEADS_0, 6), w.decision(ROUTING_0, 9)])
    gate.set()
    assert await asyncio.gather(*first, *later) == [False, False, True]
    assert [(t, r) for t, _e, r in w.control.rewound] == [(LEADS_0, "aborted")]
    # leads 0's later batch never reached the broker; routing's did, in the next transaction
    assert w.calls.count("send out.leads") == 1 and w.calls.count("send out.routing") == 1
    assert w.calls.index("send out.routing") > w.calls.index("abort")
    assert w.stores[LEADS_0].get(b"k") is None and w.core.tasks[LEADS_0].positions[TP] == 5
    assert w.txns.view(LEADS_0, w.stores[LEADS_0]) is w.stores[LEADS_0]
    assert w.stores[ROUTING_0].get(b"k") == b"routing@9"


async def test_a_route_applied_in_process_is_dropped_with_the_leads_batch_it_came_from(
        ) -> None:
    """processor._direct: the routing stage took leads 0's route in the later transaction.
    Leads 0's batch in it is dropped (decided on the failed one), so the route must be too,
    and the routing stage's in-memory state with it, or a rewound leads batch routes twice."""
    w = Worker()
    gate = first_commit_fails(w)
    first = w.commit([w.decision(LEADS_0, 5)])
    await asyncio.sleep(0.01)
    later = w.txns.start([w.decision(LEADS_0, 6), w.decision(ROUTING_0, 4)], coupled=True)
    gate.set()
    assert await asyncio.gather(*first, *later) == [False, False, False]
    assert w.routing_forgotten, "the routing stage kept the dropped route in memory"
    assert w.calls.count("begin") == 1 and w.calls.count("send out.routing") == 0
    assert w.stores[ROUTING_0].get(b"k") is None
    assert w.txns.view(ROUTING_0, w.stores[ROUTING_0]) is w.stores[ROUTING_0]
    # both seek back at the next fetch: their records are fetched and decided again
    assert w.txns.admit({TP: ["again"], RTP: ["again"]}) == {}


async def test_a_leads_batch_whose_route_was_applied_in_process_fails_with_the_route(
        ) -> None:
    """The other way round: the routing stage's failed batch drops its later ones, among them
    the route it took from leads 0, so leads 0's batch (whose published copy says "applied")
    must not commit either."""
    w = Worker()
    gate = first_commit_fails(w)
    first = w.commit([w.decision(ROUTING_0, 4)])
    await asyncio.sleep(0.01)
    later = w.txns.start([w.decision(LEADS_0, 5), w.decision(ROUTING_0, 5)], coupled=True)
    gate.set()
    assert await asyncio.gather(*first, *later) == [False, False, False]
    assert w.calls.count("send out.leads") == 0 and w.calls.count("begin") == 1
    assert w.stores[LEADS_0].get(b"k") is None and w.core.tasks[LEADS_0].positions[TP] == 5


async def test_uncoupled_batches_of_the_later_transaction_still_commit() -> None:
    """Coupling is per transaction: a failed task drops only what was coupled with it."""
    w = Worker()
    gate = first_commit_fails(w)
    first = w.commit([w.decision(LEADS_0, 5)])
    await asyncio.sleep(0.01)
    later = w.txns.start([w.decision(ROUTING_0, 9)])  # not coupled with leads 0
    gate.set()
    assert await asyncio.gather(*first, *later) == [False, True]
    assert w.stores[ROUTING_0].get(b"k") == b"routing@9"


async def test_records_of_a_task_whose_outcome_is_unknown_wait_until_it_is_reset() -> None:
    w = Worker()
    replaced = asyncio.Event()
    def unknown_then_slow(producer: FakeProducer) -> None:
        if not w.producers:  # the first producer's commit and abort fail
            producer.fail_commit, producer.fail_abort = KafkaTimeoutError(), True
        else:  # its replacement settles the open transaction, slowly
            producer.start_gate = replaced

    w.prepare = unknown_then_slow
    first = w.commit([w.decision(LEADS_0, 5)])
    await asyncio.sleep(0.01)
    assert len(w.producers) == 2 and not first[0].done()
    # the store may be behind what the broker holds now: nothing is decided on it
    assert w.txns.admit({TP: ["a record fetched meanwhile"]}) == {}
    replaced.set()
    assert await asyncio.gather(*first) == [False]
    assert [(t, r) for t, _e, r, _w in w.control.abandoned] == [(LEADS_0, "commit_unknown")]
    assert w.txns.admit({}) == {}  # the held record is dropped: the task is initialised again
    assert w.txns.held == {}


async def test_a_fetch_beyond_one_fetch_in_flight_waits_for_the_running_transaction(
        ) -> None:
    w = Worker()
    gate = asyncio.Event()
    w.prepare = lambda p: setattr(p, "commit_gate", gate)
    first = w.commit([w.decision(LEADS_0, 5)], records=1)
    await asyncio.sleep(0.01)
    # batch 1 x 2 tasks: one record in flight leaves room for one more, not for two
    await asyncio.wait_for(w.txns.wait_for_room(batch_size=1, incoming=1), 5)
    waiting = asyncio.create_task(w.txns.wait_for_room(batch_size=1, incoming=2))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    gate.set()
    await asyncio.wait_for(waiting, 5)
    assert await asyncio.gather(*first) == [True]
    await asyncio.wait_for(w.txns.drain(), 5)
    assert w.txns.held == {} and w.calls.count("commit") == 1


async def test_a_refused_generation_aborts_and_rewinds_every_task() -> None:
    w = Worker()
    assert w.commit([]) == [] and not w.producers  # nothing decided: no transaction
    refused = StaleGeneration("ILLEGAL_GENERATION", "leadrouter", 22)
    w.prepare = lambda p: setattr(p, "fail_offsets", refused)
    commits = w.commit([w.decision(LEADS_0, 5), w.decision(ROUTING_0, 9)])
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
    commits = w.commit([w.decision(LEADS_0, 5), w.decision(ROUTING_0, 9)])
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
    commits = w.commit([w.decision(LEADS_0, 5), w.decision(ROUTING_0, 9)])
    assert await asyncio.gather(*commits) == [False, False]
    assert w.producers[0].stopped and w.txns.producer is None
    assert {r for _t, _e, r, _w in w.control.abandoned} == {"fenced"}
    # the next batch gets a new producer
    assert await asyncio.gather(*w.commit([w.decision(LEADS_0, 5)])) == [True]
    assert len(w.producers) == 2 and w.stores[LEADS_0].get(b"k") == b"leads@5"


async def test_transactions_take_turns_on_two_producers_each_after_the_one_before() -> None:
    """The broker holds a producer's next transaction until the last one's markers are
    written, not another producer's; the next still waits for the commit before it."""
    w = Worker(producers=2)
    gate = asyncio.Event()
    w.prepare = lambda p: setattr(p, "commit_gate", gate if not w.producers else None)
    first = w.commit([w.decision(LEADS_0, 5)])
    await asyncio.sleep(0.01)
    second = w.commit([w.decision(LEADS_0, 6)])  # decided on the first's pending write
    await asyncio.sleep(0.01)
    assert w.calls.count("begin") == 1  # a second producer is no reason to begin beside it
    gate.set()
    assert await asyncio.gather(*first, *second) == [True, True]
    assert w.calls.index("commit") < w.calls.index("begin", 1)
    third = w.commit([w.decision(ROUTING_0, 9)])
    assert await asyncio.gather(*third) == [True]
    assert w.ids == ["app-worker-1", "app-worker-1.1"]
    assert [p.begun for p in w.producers] == [2, 1]  # turns: first, second, first again
    assert w.stores[LEADS_0].get(b"k") == b"leads@6"
    await w.txns.stop()
    assert all(p.stopped for p in w.producers)


async def test_an_unknown_outcome_replaces_that_turns_producer_and_the_next_takes_the_other(
        ) -> None:
    w = Worker(producers=2)
    def failing(producer: FakeProducer) -> None:
        if not w.producers:  # the first producer's commit and abort fail
            producer.fail_commit, producer.fail_abort = KafkaTimeoutError(), True

    w.prepare = failing
    assert await asyncio.gather(*w.commit([w.decision(LEADS_0, 5)])) == [False]
    assert [(t, r) for t, _e, r, _w in w.control.abandoned] == [(LEADS_0, "commit_unknown")]
    # the open transaction is settled by a new producer with the same transactional id
    assert w.ids == ["app-worker-1", "app-worker-1"] and w.producers[0].stopped
    assert await asyncio.gather(*w.commit([w.decision(ROUTING_0, 9)])) == [True]
    assert w.ids[2:] == ["app-worker-1.1"] and w.producers[2].begun == 1
    assert w.stores[ROUTING_0].get(b"k") == b"routing@9"


def test_transactional_ids_are_unique_per_worker_in_one_process() -> None:
    assert worker_transactional_id("app") != worker_transactional_id("app")
    assert worker_transactional_id("app").startswith("app-worker-")
