"""Exactly-once commits (Apache Kafka): per task, in ONE transaction of the task's producer:

    begin -> outputs -> changelog (state + input offsets) -> produce acks ->
    consumed offsets (send_offsets_to_transaction, the group's commit) -> commit

and only then write the local store and advance the positions. An abort leaves the store
untouched and the task seeks back; a fenced producer abandons the batch and drops the task's
state (it is initialised again, or handed over by the rebalance that follows).

The commit runs as its own asyncio task while the loop fetches and decides the next batch
(aiokafka sends no new fetch to a broker while fetched records wait unread, so a loop that
waited for its commits delayed every record that arrived meanwhile by a whole batch). A task's
next batch is decided only after its own commit is known: its store must hold the previous
batch, and if that batch was not committed the records fetched since are dropped and the task
seeks back to its positions (`admit`). A revocation, stop or reassignment first waits for
every commit in flight (`drain`).

The task's transactional producer is started, and the previous owner's fenced, by the
restore (restore.py); the processor (processor.py) rewinds or abandons a batch that was not
committed (commit.TaskControl).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import IllegalStateError, InvalidProducerEpoch, ProducerFenced
from aiokafka.structs import TopicPartition

from router.records import StageResult
from router.worker.pipeline.commit import (
    CLOSE_TIMEOUT_SECONDS,
    TaskControl,
    last_offset,
    send_changelog,
)
from router.worker.pipeline.core import Ownership, Phase, Task, TaskId
from router.worker.pipeline.loggers import trace, trace_commit
from router.worker.pipeline.stage import Decision, StageSpec
from router.worker.pipeline.store import PartitionStore, StateView
from router.worker.pipeline.txn_tuning import TxnTuning

FENCED = (ProducerFenced, InvalidProducerEpoch)


class ExactlyOnceCommits:
    """Each task's commit in flight and the records fetched meanwhile for those tasks.

    Shares the processor's task bookkeeping (core), stores and producers: a commit applies its
    own outcome to them."""

    def __init__(self, core: Ownership, stages: Mapping[str, StageSpec],
                 stores: dict[TaskId, PartitionStore],
                 producers: dict[TaskId, AIOKafkaProducer], *, group_id: str,
                 tuning: TxnTuning, control: TaskControl) -> None:
        self.core = core
        self.stages = stages
        self.stores = stores
        self.producers = producers  # one per task
        self.group_id = group_id
        self.tuning = tuning
        self.control = control
        # each task's commit in flight (True: committed and applied), and the records fetched
        # meanwhile for those tasks (decided once their commit is known)
        self.inflight: dict[TaskId, asyncio.Future[bool]] = {}
        self.held: dict[TopicPartition, list[Any]] = {}
        # the loop is deciding a fetch's tasks one by one (a transaction waiting to begin
        # waits for all of them: one per fetch, not one per task, under load)
        self.deciding = False
        # at most this many transactions at once (txn_tuning: max_concurrent_commits); the
        # others wait here, their tasks' records held as for any commit in flight
        cap = tuning.max_concurrent_commits
        self.slots = asyncio.Semaphore(cap) if cap > 0 else None

    async def drain(self) -> None:
        """Wait for every commit in flight (each applies its own outcome) and forget the
        records held for them: the tasks resume from their positions, so a kept task fetches
        them again and a revoked one leaves them to its next owner."""
        if self.inflight:
            await asyncio.gather(*self.inflight.values())
        self.inflight = {}
        self.held = {}

    def admit(self, fetched: dict[TopicPartition, list[Any]]
              ) -> dict[TopicPartition, list[Any]]:
        """The records that may be decided now. A task whose commit is still in flight keeps
        its records aside (they need the store that commit writes); a task whose last commit
        failed loses the records fetched since (they follow a batch that must be processed
        again) and seeks back to its positions, so they are fetched again in order."""
        failed: set[TaskId] = set()
        for task_id, commit in list(self.inflight.items()):
            if commit.done():
                del self.inflight[task_id]
                if not commit.result():
                    failed.add(task_id)
        merged = self.held
        for tp, rs in fetched.items():
            if tp in merged:
                merged[tp].extend(rs)  # in place: the loop polls every few ms while held
            else:
                merged[tp] = list(rs)
        self.held = {}
        ready: dict[TopicPartition, list[Any]] = {}
        for tp, rs in merged.items():
            owner = self.core.task_of(tp) if tp.topic in self.core.stage_of_topic else None
            if owner in failed:
                continue
            if owner is not None and self.holds_records_of(owner):
                self.held[tp] = rs
            else:
                ready[tp] = rs
        for task_id in failed:
            task = self.core.tasks.get(task_id)
            if task is not None and task.phase is Phase.ACTIVE:
                with contextlib.suppress(IllegalStateError):
                    self.control.seek(task)
        return ready

    def holds_records_of(self, task_id: TaskId) -> bool:
        return task_id in self.inflight  # its next batch needs the store this commit writes

    def hold(self, batch: Sequence[tuple[TopicPartition, Sequence[Any]]]) -> None:
        """Keep these records aside again, ahead of any fetched since (admit decides)."""
        for tp, rs in batch:
            self.held[tp] = [*rs, *self.held.get(tp, [])]

    def view(self, task_id: TaskId, store: StateView) -> StateView:
        """What the task's next batch reads: its store (nothing uncommitted is decided on)."""
        return store

    def positions(self, task: Task) -> dict[TopicPartition, int]:
        """Where the task's next batch starts."""
        return task.positions

    async def wait_for_room(self, batch_size: int, incoming: int) -> None:
        """The broker is behind (many records held for the commits in flight): wait for one."""
        if sum(len(rs) for rs in self.held.values()) > batch_size * 4 and self.inflight:
            self.flush()
            await asyncio.wait(self.inflight.values(), return_when=asyncio.FIRST_COMPLETED)

    def flush(self) -> None:
        """Nothing waits to begin here: each task's transaction begins when it is decided."""

    def start(self, decided: list[Decision], records: int = 0, *,
              coupled: bool = False) -> list[asyncio.Future[bool]]:
        """One commit per task, each running beside the loop from now on. `coupled`
        decisions must commit or fail together, which only one transaction per worker
        offers (worker_txn.py); the processor never couples them here."""
        if coupled:
            raise ValueError("coupled decisions need one transaction per worker")
        commits: list[asyncio.Future[bool]] = []
        for d in decided:
            commit = asyncio.create_task(self.transact(*d))
            self.inflight[d[0]] = commit
            commits.append(commit)
        return commits

    async def transact(self, task_id: TaskId, epoch: int,
                       offsets: dict[TopicPartition, int], result: StageResult) -> bool:
        """Exactly-once: outputs, changelog and consumed offsets in ONE transaction. True
        when the batch was committed and applied to the task's store and positions."""
        if self.slots is None:
            return await self._transact(task_id, epoch, offsets, result)
        async with self.slots:
            return await self._transact(task_id, epoch, offsets, result)

    async def _transact(self, task_id: TaskId, epoch: int,
                        offsets: dict[TopicPartition, int], result: StageResult) -> bool:
        producer = self.producers[task_id]
        stage = self.stages[task_id.stage]
        clock = StepClock() if trace.isEnabledFor(logging.DEBUG) else None
        try:
            # 1. begin: everything below becomes visible to read_committed readers together
            await producer.begin_transaction()
            # 2. the outputs (transitions, assignments, routing records, dead letters...)
            acks = [await producer.send(out.topic, out.value, key=out.key,
                                        partition=out.partition) for out in result.outputs]
            # 3. the state, on the task's own changelog partition, with the input offsets
            sent = await send_changelog(producer, stage.changelog, task_id.partition,
                                        result.writes)
            if clock:
                clock.step("queue")
            if self.tuning.acks_before_offsets:  # why: txn_tuning.py
                await asyncio.gather(*acks, *(future for _count, future in sent))
            if clock:
                clock.step("add_partitions_and_produce")
            # 4. the consumed offsets: the group's commit happens with the transaction's
            await producer.send_offsets_to_transaction(offsets, self.group_id)
            if clock:
                clock.step("offsets")
            # 5. commit: all of it, or (on any failure before this returns) none of it
            await producer.commit_transaction()
            if clock:
                clock.step("end_txn")
            last = await last_offset(sent)
        except FENCED as exc:
            # another worker owns this task now (its producer took our transactional id):
            # abandon the batch, drop the state; the rebalance that made it so reaches us
            await self.control.abandon(task_id, epoch, "fenced", exc, wait_for_rebalance=True)
            return False
        except Exception as exc:  # a broker error, a timeout, a bug in a send path
            if await abort(producer):  # outcome known: nothing of the batch is visible
                self.control.rewind(task_id, epoch, "aborted", exc)
            else:
                await self.control.abandon(task_id, epoch, "commit_unknown", exc)
            return False
        # 6. only now the local store: an aborted transaction must leave no trace in it
        applied = self.core.processed(task_id, epoch, offsets)
        if applied:
            self.stores[task_id].write(result.writes, last)
        trace_commit(self.core.generation, offsets)
        if clock:
            trace.debug("txn", extra={"task": str(task_id), "outputs": len(result.outputs),
                                      "writes": len(result.writes), "ms": clock.steps})
        return applied


class StepClock:
    """Milliseconds per step of one transaction (LEADROUTER_TRACE=1: the hop breakdown)."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}
        self._last = time.perf_counter()

    def step(self, name: str) -> None:
        now = time.perf_counter()
        self.steps[name] = round((now - self._last) * 1000, 2)
        self._last = now


async def abort(producer: AIOKafkaProducer) -> bool:
    try:
        await asyncio.wait_for(producer.abort_transaction(), CLOSE_TIMEOUT_SECONDS)
        return True
    except Exception:  # fatal state, or the broker is away: the outcome is unknown
        return False
