"""Exactly-once commits with ONE transaction at a time per worker (txn_tuning:
worker_transactions), as Kafka Streams' exactly_once_v2: every task decided while the previous
transaction commits joins the next one,

    begin -> every task's outputs and changelog -> produce acks ->
    every task's consumed offsets with the member's generation (KIP-447) -> commit

and only then each task's store and positions. Nine tasks no longer run nine transactions side
by side on one event loop: `make bench-txn` measured one producer's transaction 4 x faster
than nine at once (README "Measured").

Fencing without a producer per task (kip447.py): the offsets carry the consumer's generation
and member id, so once a rebalance has moved a partition the group coordinator refuses a
zombie's offsets and its transaction can only abort; the new owner fetches offsets with
require_stable, which waits for any transaction still holding offsets of its partitions, and
its restore reads the changelog until the input offsets it carries reach those (restore.py).

The loop does not wait for a transaction to decide the next batch of its tasks: that batch
reads the writes not yet committed (pending.py) and joins the next transaction, which begins
as the running one ends, on the other of two producers (txn_tuning: worker_producers): the
broker answers EndTxn before it writes the commit markers, and until they are written it
holds the same producer's next transaction (CONCURRENT_TRANSACTIONS), not another's. The next
transaction still begins only once the one before has committed, so what it writes, decided
on top of that one, can never outlive an abort of it; the group coordinator keeps the offsets
of the later TxnOffsetCommit whichever marker it applies first (it compares their positions
in the offsets log). When a transaction fails, its tasks' later batches are dropped with
it before the next one begins, and the tasks' records are held until they are rewound or
reset (`_fail`, `_settle`).

What is shared with a producer per task (eos_commit.py): the records held, the failed-commit
seek back (`admit`), and `drain`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition

from router.worker.pipeline import kip447
from router.worker.pipeline.commit import (
    TaskControl,
    record_offsets,
    send_changelog,
    stop_producer,
)
from router.worker.pipeline.core import Ownership, Task, TaskId
from router.worker.pipeline.eos_commit import FENCED, ExactlyOnceCommits, StepClock, abort
from router.worker.pipeline.loggers import trace, trace_commit
from router.worker.pipeline.pending import PendingWrites
from router.worker.pipeline.stage import Decision, StageSpec
from router.worker.pipeline.store import PartitionStore, StateView
from router.worker.pipeline.txn_tuning import TxnTuning

_PRODUCERS = itertools.count(1)


def worker_transactional_id(app_id: str) -> str:
    """Unique per live worker (several run on one host, and in one test process). A crashed
    worker's open transaction is therefore aborted by its timeout (10 s), not by a successor
    taking its id: the same trade as Kafka Streams' per-process ids."""
    return f"{app_id}-worker-{socket.gethostname()}-{os.getpid()}-{next(_PRODUCERS)}"


@dataclass(slots=True)
class _Transaction:
    """The decided batches of one transaction, open to more until it begins, and each task's
    outcome in it (True: committed and applied to the task's store and positions)."""

    decisions: list[Decision] = field(default_factory=list)
    outcomes: dict[TaskId, asyncio.Future[bool]] = field(default_factory=dict)
    records: int = 0  # input records decided into it
    # the tasks of coupled decisions (a stage's outputs applied in process by another,
    # processor._direct): if one of them fails in this transaction, all of them do
    coupled: set[TaskId] = field(default_factory=set)
    clock: StepClock | None = field(
        default_factory=lambda: StepClock() if trace.isEnabledFor(logging.DEBUG) else None)


class WorkerTransactions(ExactlyOnceCommits):
    def __init__(self, core: Ownership, stages: Mapping[str, StageSpec],
                 stores: dict[TaskId, PartitionStore], *, group_id: str, tuning: TxnTuning,
                 control: TaskControl, make_producer: Callable[[str], AIOKafkaProducer],
                 transactional_id: str,
                 group: Callable[[], kip447.GroupMetadata]) -> None:
        super().__init__(core, stages, stores, {}, group_id=group_id, tuning=tuning,
                         control=control)
        self.make_producer = make_producer
        self.transactional_id = transactional_id
        self.group = group  # the member's generation when the offsets are sent
        # the producers the transactions take turn on, and the one the next runs on
        self._producers: list[AIOKafkaProducer | None] = [None] * tuning.worker_producers
        self._turn = 0
        self._next: _Transaction | None = None  # open to more batches until it begins
        self._running: asyncio.Task[None] | None = None  # the one transaction committing
        self._running_txn: _Transaction | None = None
        self.pending = PendingWrites()  # decided, not yet committed: what the next batch reads
        # tasks whose transaction failed, until they are rewound or reset: their outcomes
        self._settling: dict[TaskId, list[asyncio.Future[bool]]] = {}

    def start(self, decided: list[Decision], records: int = 0, *,
              coupled: bool = False) -> list[asyncio.Future[bool]]:
        """The batches join the transaction that begins next (one runs at a time; `flush`
        begins it when none is running); a task's next batch is decided on top of them
        (pending.py) instead of waiting for them. `coupled`: they depend on each other
        (processor._direct), so they are dropped together if one of them is (`_fail`)."""
        if not decided:
            return []
        txn = self._next
        if txn is None:
            txn = self._next = _Transaction()
        txn.decisions.extend(decided)
        txn.records += records
        if coupled:
            txn.coupled.update(d[0] for d in decided)
        commits = []
        for task_id, _epoch, offsets, result in decided:
            outcome = txn.outcomes.get(task_id)
            if outcome is None:
                outcome = txn.outcomes[task_id] = asyncio.get_running_loop().create_future()
            self.inflight[task_id] = outcome
            self.pending.add(task_id, offsets, result.writes)
            commits.append(outcome)
        return commits

    def flush(self) -> None:
        """Begin the next transaction, unless one is running (it then begins as that one
        ends)."""
        if self._running is not None or self._next is None:
            return
        txn, self._next = self._next, None  # from here on, decisions join the next one
        self._running_txn = txn
        self._running = asyncio.create_task(self._run(txn))

    def holds_records_of(self, task_id: TaskId) -> bool:
        # a task's next batch reads its pending writes instead of waiting for them, unless
        # its transaction just failed
        return task_id in self._settling

    def view(self, task_id: TaskId, store: StateView) -> StateView:
        return self.pending.view(task_id, store)

    def positions(self, task: Task) -> dict[TopicPartition, int]:
        return self.pending.positions(task.id, task.positions)

    async def wait_for_room(self, batch_size: int, incoming: int) -> None:
        """Records decided and not yet committed stay within one fetch's worth (batch_size
        per task), as when a task's next batch waited for its commit: under full load the
        loop waits for the transaction running, below it decides ahead. Deciding ahead at
        full load measured no faster and 40 MB more peak RSS per 100k leads (README)."""
        limit = batch_size * max(1, len(self.core.tasks))
        while self._running is not None and self._in_flight() + incoming > limit:
            await asyncio.wait([self._running])

    def _in_flight(self) -> int:
        running = self._running_txn.records if self._running_txn is not None else 0
        return running + (self._next.records if self._next is not None else 0)

    async def drain(self) -> None:
        while self._running is not None or self._next is not None:
            self.flush()
            if self._running is not None:
                await asyncio.wait([self._running])
        self.pending.clear()
        await super().drain()

    @property
    def producer(self) -> AIOKafkaProducer | None:
        """The producer whose turn it is (the running transaction's while one runs)."""
        return self._producers[self._turn]

    def turn_id(self, turn: int) -> str:
        """The transactional id of each turn: the worker's own, then one more per producer."""
        return self.transactional_id if turn == 0 else f"{self.transactional_id}.{turn}"

    async def stop(self) -> None:
        for turn, producer in enumerate(self._producers):
            if producer is not None:
                self._producers[turn] = None
                await stop_producer(producer)

    async def _run(self, txn: _Transaction) -> None:
        if txn.clock:
            txn.clock.step("wait")  # since its first batch was decided
        try:
            if txn.decisions:  # else every task of it failed before it began
                await self._transact_all(txn)
        except asyncio.CancelledError:  # the worker is stopping
            for outcome in txn.outcomes.values():
                outcome.cancel()
            raise
        except BaseException as exc:  # a bug: every task of it must still learn its fate
            self._fail(txn, list(txn.outcomes))
            self._settle(exc)
            raise
        finally:
            self._running, self._running_txn = None, None
            # whatever the outcome: the other producer is not held by this one's markers
            self._turn = (self._turn + 1) % len(self._producers)
        self._settle()
        if not self.deciding:  # else the loop begins it with the whole fetch decided
            self.flush()

    def _fail(self, txn: _Transaction, task_ids: list[TaskId]) -> None:
        """These tasks' batches in `txn` are not applied: neither are their later batches,
        decided on top of them (dropped from the next transaction before it begins). Their
        records are held from now until the tasks are rewound or reset (`_settle`), so the
        loop decides nothing for them on the dropped writes, nor on a store that the
        transaction's unknown outcome may have left behind."""
        later = self._next
        failing = list(task_ids)
        if later is not None and later.coupled & set(failing):
            # a route applied in process without the lead's batch, or the lead's batch with
            # its route marked applied but not applied: neither may commit
            failing += sorted(later.coupled - set(failing), key=str)
        for task_id in failing:
            # a stage's in-memory state may hold the dropped batches (the routing stage)
            self.stages[task_id.stage].forget(task_id.partition)
            self.pending.drop(task_id)
            outcomes = self._settling.setdefault(task_id, [])
            if task_id in txn.outcomes:
                outcomes.append(txn.outcomes[task_id])
            if later is not None and task_id in later.outcomes:
                later.decisions = [d for d in later.decisions if d[0] != task_id]
                outcomes.append(later.outcomes.pop(task_id))

    def _settle(self, exc: BaseException | None = None) -> None:
        """The failed tasks are rewound or reset: their outcomes are known (False)."""
        settling, self._settling = self._settling, {}
        for outcomes in settling.values():
            for outcome in outcomes:
                if not outcome.done():
                    if exc is None:
                        outcome.set_result(False)
                    else:
                        outcome.set_exception(exc)

    async def _ready_producer(self) -> AIOKafkaProducer:
        turn = self._turn
        current = self._producers[turn]
        if current is None:
            current = self.make_producer(self.turn_id(turn))
            try:
                await current.start()
            except BaseException:
                await stop_producer(current)
                raise
            self._producers[turn] = current
        return current

    async def _transact_all(self, txn: _Transaction) -> None:
        decisions, clock = txn.decisions, txn.clock
        try:
            producer = await self._ready_producer()
            # 1. begin
            await producer.begin_transaction()
            acks: list[asyncio.Future[Any]] = []
            offsets: dict[TopicPartition, int] = {}
            writes: dict[TaskId, list[tuple[bytes, bytes | None]]] = {}
            ends: list[int] = []  # each batch's last write, counted in its task's writes
            for task_id, _epoch, task_offsets, result in decisions:
                # 2. each batch's outputs
                acks.extend([await producer.send(out.topic, out.value, key=out.key,
                                                 partition=out.partition)
                             for out in result.outputs])
                task_writes = writes.setdefault(task_id, [])
                task_writes.extend(result.writes)
                ends.append(len(task_writes))
                offsets.update(task_offsets)
            # 3. each task's state on its changelog partition, all its batches' writes in one
            # send: aiokafka queues a second record batch for a partition only once the first
            # is in a produce request, so a batch each cost a produce round trip (~10 ms)
            # before the last of them was handed over (README "Measured")
            sent: dict[TaskId, list[tuple[int, asyncio.Future[Any]]]] = {}
            for task_id, task_writes in writes.items():
                sent[task_id] = await send_changelog(
                    producer, self.stages[task_id.stage].changelog, task_id.partition,
                    task_writes)
                acks.extend(future for _count, future in sent[task_id])
            if clock:
                clock.step("queue")
            if self.tuning.acks_before_offsets:  # why: txn_tuning.py
                await asyncio.gather(*acks)
            if clock:
                clock.step("add_partitions_and_produce")
            # 4. every task's consumed offsets, fenced by the member's generation
            await producer.send_offsets_to_transaction(offsets, self.group())
            if clock:
                clock.step("offsets")
            # 5. commit: all of it, or none of it
            await producer.commit_transaction()
            if clock:
                clock.step("end_txn")
            lasts = await self._last_offsets(decisions, sent, ends)
        except kip447.StaleGeneration as exc:
            # a rebalance moved (some of) these partitions: this worker's offsets were
            # refused, so the transaction can only abort; the rebalance revokes the tasks
            await self._after_failure(txn, "stale_generation", exc)
            return
        except FENCED as exc:
            # another producer took this worker's transactional id (it never should: the id
            # is unique per process); drop it and every task of the batch
            self._fail(txn, list(txn.outcomes))
            await self._drop_producer()
            for task_id, epoch, _o, _r in decisions:
                await self.control.abandon(task_id, epoch, "fenced", exc)
            return
        except Exception as exc:  # a broker error, a timeout, a bug in a send path
            await self._after_failure(txn, "aborted", exc)
            return
        # 6. only now each task's store: an aborted transaction leaves no trace in them
        for (task_id, epoch, task_offsets, result), last in zip(decisions, lasts, strict=True):
            if self.core.processed(task_id, epoch, task_offsets):
                self.stores[task_id].write(result.writes, last)
                self.pending.committed(task_id, task_offsets, result.writes)
            else:  # the task changed meanwhile: its later batches are void too
                self._fail(txn, [task_id])
        for task_id, outcome in txn.outcomes.items():
            if task_id not in self._settling:
                outcome.set_result(True)
        trace_commit(self.core.generation, offsets)
        if clock:
            trace.debug("txn", extra={"tasks": len(decisions), "outputs": sum(
                len(d[3].outputs) for d in decisions), "ms": clock.steps})

    @staticmethod
    async def _last_offsets(decisions: list[Decision],
                            sent: dict[TaskId, list[tuple[int, asyncio.Future[Any]]]],
                            ends: list[int]) -> list[int | None]:
        """Each batch's last changelog offset (what a RocksDB store persists as applied)."""
        by_task: dict[TaskId, list[int]] = {}
        for (task_id, _e, _o, _r), end in zip(decisions, ends, strict=True):
            by_task.setdefault(task_id, []).append(end)
        found = {task_id: iter(await record_offsets(sent[task_id], task_ends))
                 for task_id, task_ends in by_task.items()}
        return [next(found[task_id]) for task_id, _e, _o, _r in decisions]

    async def _after_failure(self, txn: _Transaction, reason: str,
                             exc: BaseException) -> None:
        producer = self.producer
        aborted = producer is not None and await abort(producer)
        self._fail(txn, list(txn.outcomes))
        if aborted:
            for task_id, epoch, _o, _r in txn.decisions:  # nothing of the batch is visible
                self.control.rewind(task_id, epoch, reason, exc)
            return
        # the outcome is unknown: a new producer with the same id completes or aborts the
        # open transaction (InitProducerId) before anything else is written; the tasks are
        # initialised again from what the broker then holds
        await self._drop_producer()
        with contextlib.suppress(Exception):  # else the next transaction's producer does it
            await self._fresh_producer()
        for task_id, epoch, _o, _r in txn.decisions:
            await self.control.abandon(task_id, epoch, "commit_unknown", exc)

    async def _fresh_producer(self) -> None:
        producer = await self._ready_producer()
        # aiokafka's only public wait for InitProducerId: an empty transaction
        await producer.begin_transaction()
        await producer.abort_transaction()

    async def _drop_producer(self) -> None:
        producer = self._producers[self._turn]
        if producer is not None:
            self._producers[self._turn] = None
            await stop_producer(producer)


