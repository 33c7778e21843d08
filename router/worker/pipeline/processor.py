"""The partition processor's runtime: one consumer-group member on plain aiokafka, batched,
exactly-once on Apache Kafka, at-least-once on brokers without transactions (Tansu).

Loop (one coroutine decides; with exactly-once a task's commit runs beside the loop):
  1. initialise the tasks that need it (new assignment, or reset after a fenced producer):
     a. exactly-once: start the task's transactional producer (transactional_id
        "{app_id}-{stage}-{partition}"). Its InitProducerId bumps the id's epoch, which fences
        the previous owner's producer (a zombie: it can no longer write or commit), and the
        broker completes that producer's open transaction before answering;
     b. restore the task's store from its changelog partition with a plain consumer, to the
        end (read_committed: aborted records are skipped; to the last stable offset, which
        after (a) includes the previous owner's last commit). RocksDB starts after the
        changelog offset it persisted, the memory store from the beginning;
     c. resume each input partition at the later of the group's committed offset (fetched
        now, after the fence) and the offsets the changelog carries (core.resume_positions);
  2. getmany, split by task (core.split: only active tasks' records are processed);
  3. per task, the stage's pure handler decides (outputs + state writes);
  4. commit, exactly-once, per task, in ONE transaction of the task's producer:
        begin -> outputs -> changelog (state + input offsets) -> produce acks ->
        consumed offsets (send_offsets_to_transaction, the group's commit) -> commit
     and only then write the local store and advance the positions. An abort leaves the
     store untouched and the task seeks back; a fenced producer abandons the batch and drops
     the task's state (it is initialised again, or handed over by the rebalance that follows).
     The commit runs as its own asyncio task while the loop fetches and decides the next
     batch (aiokafka sends no new fetch to a broker while fetched records wait unread, so a
     loop that waited for its commits delayed every record that arrived meanwhile by a whole
     batch). A task's next batch is decided only after its own commit is known: its store
     must hold the previous batch, and if that batch was not committed the records fetched
     since are dropped and the task seeks back to its positions. A revocation, stop or
     reassignment first waits for every commit in flight;
  4'. at-least-once (Tansu): outputs sent and acked, then the changelog records acked, then
     the local store written, then the offsets committed. A crash between two steps replays
     the batch: same outputs with the same deterministic event ids (consumers drop repeats).

Rebalances (eager, aiokafka's listener): on revocation the listener waits for the batch in
flight to finish (the lock) and suspends every task; the assignment then keeps the tasks
owned in the previous generation (state and positions kept), closes the others and pauses
the new ones until step 1 has initialised them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
    TopicAlreadyExistsError,
)
from aiokafka.structs import TopicPartition

from router.adapters.topics import compacted_topic_configs
from router.metrics import BATCH_EVENTS, BATCH_SECONDS, BATCHES_ABANDONED, CHANGELOG_RESTORED
from router.records import Output, Record
from router.settings import Settings, bootstrap_servers
from router.worker.pipeline.assignor import CoPartitionedAssignor
from router.worker.pipeline.core import (
    Ownership,
    Phase,
    Task,
    TaskId,
    next_offsets,
    resume_positions,
)
from router.worker.pipeline.store import INPUT_OFFSETS, PartitionStore, encode_offsets, open_store
from router.worker.pipeline.txn_tuning import TxnTuning

log = logging.getLogger(__name__)
trace = logging.getLogger("router.trace")
trace.setLevel(logging.DEBUG if os.environ.get("LEADROUTER_TRACE") == "1" else logging.INFO)

FENCED = (ProducerFenced, InvalidProducerEpoch)
RETRY_SECONDS = 1.0
IDLE_FETCH_MS = 100
HELD_POLL_MS = 2
CLOSE_TIMEOUT_SECONDS = 5.0
# a transaction left open by a crashed worker holds back every read_committed reader of the
# partitions it wrote until the new owner fences it or this timeout aborts it
TRANSACTION_TIMEOUT_MS = 10_000


@dataclass(slots=True)
class TaskResult:
    outputs: list[Output] = field(default_factory=list)
    writes: list[tuple[bytes, bytes | None]] = field(default_factory=list)


Handler = Callable[[int, list[Record], PartitionStore, datetime], TaskResult]


@dataclass(frozen=True)
class StageSpec:
    """One stage of the pipeline as the processor runs it: its input topics (co-partitioned),
    its changelog, its handler, its partition count. A task is one StageSpec on one partition.

    Named StageSpec, not Stage: router.domain.events.Stage is the lead's stage (NEW, MQL, SQL),
    and the worker imports both. "Stage" stays the pipeline's word for the thing itself
    (TaskId.stage, LEADS, ROUTING); this is its declaration."""

    name: str
    topics: tuple[str, ...]
    changelog: str
    table: str  # label of the restored-records counter and of /ready
    handle: Handler
    partitions: int
    # forget in-memory state derived from the store (the routing stage keeps its whole state
    # in memory): called whenever the store is dropped or replaced, or a batch is abandoned
    forget: Callable[[int], None] = lambda _partition: None


@dataclass(slots=True)
class _Pending:
    task: Task
    epoch: int
    stage: StageSpec
    store: PartitionStore | None = None
    producer: AIOKafkaProducer | None = None


class PartitionProcessor:
    def __init__(self, settings: Settings, stages: Sequence[StageSpec], *, exactly_once: bool,
                 read_committed: bool, assignor: CoPartitionedAssignor) -> None:
        self.settings = settings
        self.stages = {s.name: s for s in stages}
        self.exactly_once = exactly_once
        self.read_committed = read_committed
        self.assignor = assignor
        self.group_id = settings.app_id
        self.bootstrap = bootstrap_servers(settings.broker)
        self.client = settings.kafka_client_kwargs()
        self.core = Ownership({t: s.name for s in stages for t in s.topics})
        self.tuning = TxnTuning.from_env()
        self.tuning.apply()
        self.stores: dict[TaskId, PartitionStore] = {}
        self.producers: dict[TaskId, AIOKafkaProducer] = {}  # exactly-once: one per task
        self.restored: Counter[str] = Counter({s.table: 0 for s in stages})
        self.aborted: Counter[str] = Counter()  # reason -> batches abandoned
        self.assigned_once = False
        self.started = False
        self._lock = asyncio.Lock()
        # exactly-once: each task's commit in flight (True: committed and applied), and the
        # records fetched meanwhile for those tasks (decided once their commit is known)
        self._inflight: dict[TaskId, asyncio.Task[bool]] = {}
        self._held: dict[TopicPartition, list[Any]] = {}
        self._batch_timers: set[asyncio.Task[None]] = set()
        self._retry_at: dict[TaskId, float] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "processor not started"
        return self._consumer

    @property
    def producer(self) -> AIOKafkaProducer:
        """The non-transactional producer: at-least-once outputs, clock ticks, decay records."""
        assert self._producer is not None, "processor not started"
        return self._producer

    async def start(self) -> None:
        await self._ensure_changelogs()
        s = self.settings
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                          linger_ms=1, **self.client)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed" if self.read_committed else "read_uncommitted",
            max_poll_records=s.batch_size, fetch_max_wait_ms=s.fetch_wait_ms(),
            session_timeout_ms=int(s.session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(max(0.5, s.session_timeout_seconds / 5) * 1000),
            partition_assignment_strategy=(self.assignor,), **self.client)
        await self._consumer.start()
        topics = sorted({t for stage in self.stages.values() for t in stage.topics})
        self._consumer.subscribe(topics, listener=_Listener(self))
        self.started = True

    async def stop(self) -> None:
        async with self._lock:  # the batch in flight finishes first
            await self._drain()
            self.started = False
            for task in self.core.lost():
                await self._close(task.id)
        if self._consumer is not None:
            await self._consumer.stop()  # leaves the group: the others rebalance at once
        if self._producer is not None:
            await self._producer.stop()

    async def _ensure_changelogs(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.client)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            new = [NewTopic(s.changelog, s.partitions, self.settings.replication_factor,
                            topic_configs=compacted_topic_configs(self.settings))
                   for s in self.stages.values() if s.changelog not in existing]
            if new:
                with contextlib.suppress(TopicAlreadyExistsError):  # another worker was faster
                    await admin.create_topics(new)
        finally:
            await admin.close()

    async def run(self, stopping: asyncio.Event) -> None:
        """Until `stopping` is set: initialise what needs it, then one batch at a time."""
        wait_ms = IDLE_FETCH_MS  # getmany returns as soon as records are buffered
        while not stopping.is_set():
            now = time.monotonic()
            due = [t for t in self.core.initialising() if self._retry_at.get(t.id, 0.0) <= now]
            if due:
                await self._initialise(due)
            # not under the lock: getmany waits for a rebalance in progress, whose revocation
            # callback waits for the lock (a deadlock). Records fetched before a revocation
            # are safe anyway: their tasks are suspended by then, so split() drops them.
            # batch_size per task: one transaction per task and batch, so the per-transaction
            # round trips are shared by up to batch_size records of each partition
            most = self.settings.batch_size * max(1, len(self.core.tasks))
            try:
                # records held for a commit in flight: look again soon (its outcome decides)
                fetched = await self.consumer.getmany(
                    timeout_ms=HELD_POLL_MS if self._held else wait_ms, max_records=most)
            except KafkaError as exc:
                log.warning("fetch failed; retrying", extra={"error": repr(exc)})
                fetched = {}
            if fetched or self._held:
                async with self._lock:
                    await self._process(fetched)
            else:
                await asyncio.sleep(0)

    # ---- rebalances (called by aiokafka's coordinator task) ---------------------------------

    async def on_revoked(self) -> None:
        async with self._lock:  # let the batch in flight finish (and commit) first
            await self._drain()
            self.core.revoke_all()
            trace.debug("revoked", extra={"generation": self.core.generation})

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            await self._drain()
            # aiokafka has no public accessor for the generation it just joined (faust read
            # the same attribute); core.assign needs it to tell a kept task from a missed one
            generation = int(getattr(self.consumer._coordinator, "generation", -1))
            changes = self.core.assign(assigned, generation)
            for task in changes.dropped:
                await self._close(task.id)
            for task in changes.started:
                self.consumer.pause(*task.inputs)
            for task in changes.kept:
                self._retry_at.pop(task.id, None)  # a fenced task's rebalance has come
                if task.phase is Phase.ACTIVE:
                    self._seek(task)  # aiokafka reset them to the committed offsets
                else:
                    self.consumer.pause(*task.inputs)
            self.assigned_once = True
            log.info("partitions assigned", extra={
                "generation": generation,
                "kept": [str(t.id) for t in changes.kept],
                "started": [str(t.id) for t in changes.started],
                "dropped": [str(t.id) for t in changes.dropped]})

    async def _drain(self) -> None:
        """Wait for every commit in flight (each applies its own outcome) and forget the
        records held for them: the tasks resume from their positions, so a kept task fetches
        them again and a revoked one leaves them to its next owner."""
        if self._inflight:
            await asyncio.gather(*self._inflight.values())
        self._inflight = {}
        self._held = {}

    def _admit(self, fetched: dict[TopicPartition, list[Any]]
               ) -> dict[TopicPartition, list[Any]]:
        """The records that may be decided now. A task whose commit is still in flight keeps
        its records aside (they need the store that commit writes); a task whose last commit
        failed loses the records fetched since (they follow a batch that must be processed
        again) and seeks back to its positions, so they are fetched again in order."""
        failed: set[TaskId] = set()
        for task_id, commit in list(self._inflight.items()):
            if commit.done():
                del self._inflight[task_id]
                if not commit.result():
                    failed.add(task_id)
        merged = self._held
        for tp, rs in fetched.items():
            merged[tp] = merged[tp] + rs if tp in merged else rs
        self._held = {}
        ready: dict[TopicPartition, list[Any]] = {}
        for tp, rs in merged.items():
            owner = self.core.task_of(tp) if tp.topic in self.core.stage_of_topic else None
            if owner in failed:
                continue
            if owner in self._inflight:
                self._held[tp] = rs
            else:
                ready[tp] = rs
        for task_id in failed:
            task = self.core.tasks.get(task_id)
            if task is not None and task.phase is Phase.ACTIVE:
                with contextlib.suppress(IllegalStateError):
                    self._seek(task)
        return ready

    def _seek(self, task: Task) -> None:
        for tp in task.inputs:
            self.consumer.seek(tp, task.positions[tp])
        self.consumer.resume(*task.inputs)

    async def _close(self, task_id: TaskId) -> None:
        """Drop a task's state and producer (revoked, or its batch abandoned)."""
        self.stages[task_id.stage].forget(task_id.partition)
        store = self.stores.pop(task_id, None)
        if store is not None:
            store.close()
        producer = self.producers.pop(task_id, None)
        if producer is not None:
            await _stop_producer(producer)

    # ---- initialisation ----------------------------------------------------------------------

    async def _initialise(self, tasks: list[Task]) -> None:
        pending = [_Pending(t, t.epoch, self.stages[t.id.stage]) for t in tasks]
        try:
            if self.exactly_once:  # (a) fence the previous owners first
                await asyncio.gather(*(self._fence(p) for p in pending))
            for p in pending:
                p.store = open_store(self.settings.store, self.settings.data_dir,
                                     self.settings.app_id, str(p.task.id),
                                     self.settings.rocksdb_memory_mb)
            await self._restore(pending)  # (b)
            committed = await self._committed(pending)  # (c), after the fence
        except Exception as exc:  # broker away, RocksDB still locked by a previous owner...
            log.warning("task initialisation failed; retrying", extra={
                "tasks": [str(p.task.id) for p in pending], "error": repr(exc)})
            for p in pending:
                await _discard(p)
                self._retry_at[p.task.id] = time.monotonic() + RETRY_SECONDS
            return
        for p in pending:
            task, store = p.task, p.store
            assert store is not None
            stored = store.input_offsets
            positions = resume_positions(task.inputs, committed,
                                         {tp: stored[tp.topic] for tp in task.inputs
                                          if tp.topic in stored})
            # no await from here to the seek: the task cannot change in between
            if not self.core.activate(task.id, p.epoch, positions):
                trace.debug("initialised task went stale", extra={"task": str(task.id)})
                await _discard(p)  # revoked (or reassigned) while restoring
                continue
            p.stage.forget(task.id.partition)  # derived state is rebuilt from this store
            self.stores[task.id] = store
            if p.producer is not None:
                self.producers[task.id] = p.producer
            self._retry_at.pop(task.id, None)
            if task.phase is Phase.ACTIVE:
                self._seek(task)
            log.info("task ready", extra={"task": str(task.id), "positions": {
                f"{tp.topic}[{tp.partition}]": o for tp, o in positions.items()}})

    async def _fence(self, p: _Pending) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", linger_ms=1,
            transactional_id=f"{self.settings.app_id}-{p.task.id.stage}-{p.task.id.partition}",
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            retry_backoff_ms=self.tuning.retry_backoff_ms, **self.client)
        p.producer = producer
        await producer.start()
        # aiokafka's only public wait for InitProducerId: an empty transaction
        await producer.begin_transaction()
        await producer.abort_transaction()

    async def _restore(self, pending: list[_Pending]) -> None:
        by_tp = {TopicPartition(p.stage.changelog, p.task.id.partition): p for p in pending}
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if self.read_committed else "read_uncommitted",
            fetch_max_wait_ms=self.settings.fetch_wait_ms(), **self.client)
        await consumer.start()
        try:
            consumer.assign(list(by_tp))
            start: dict[TopicPartition, int] = {}
            for tp, p in by_tp.items():
                assert p.store is not None
                at = p.store.changelog_offset
                if at is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    start[tp] = at + 1
                    consumer.seek(tp, at + 1)
            left = set(by_tp)
            while left:
                fetched = await consumer.getmany(*left, timeout_ms=500, max_records=20_000)
                for tp, records in fetched.items():
                    p = by_tp[tp]
                    assert p.store is not None
                    if records[0].offset < start.pop(tp, 0):
                        # the fetcher reset us to the beginning: the changelog is shorter than
                        # what this data dir says it applied (the topic was recreated)
                        log.warning("changelog behind the local store; rebuilding it",
                                    extra={"changelog": _name(tp)})
                        p.store.wipe()
                    p.store.write([(r.key, r.value) for r in records if r.key is not None],
                                  records[-1].offset)
                    self.restored[p.stage.table] += len(records)
                    CHANGELOG_RESTORED.labels(p.stage.table).inc(len(records))
                for tp in list(left):
                    p = by_tp[tp]
                    if not self.core.is_current(p.task.id, p.epoch):
                        left.discard(tp)  # revoked meanwhile: activate() will refuse it
                    elif await self._at_end(consumer, tp):
                        left.discard(tp)
        finally:
            await consumer.stop()

    async def _at_end(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
        """Read to the end. The end comes from Fetch responses, never ListOffsets (Tansu
        answers ListOffsets wrongly): the last stable offset reading read_committed, else
        the high watermark."""
        end = consumer.last_stable_offset(tp) if self.read_committed else None
        if end is None or end < 0:
            end = consumer.highwater(tp)
        return end is not None and await consumer.position(tp) >= end

    async def _committed(self, pending: list[_Pending]) -> dict[TopicPartition, int | None]:
        tps = [tp for p in pending for tp in p.task.inputs]
        values = await asyncio.gather(*(self.consumer.committed(tp) for tp in tps))
        return dict(zip(tps, values, strict=True))

    # ---- batches -----------------------------------------------------------------------------

    async def _process(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        started = time.perf_counter()
        if sum(len(rs) for rs in self._held.values()) > self.settings.batch_size * 4:
            await asyncio.wait(self._inflight.values())  # the broker is behind: wait for it
        if self._inflight or self._held:
            fetched = self._admit(fetched)
        by_task = self.core.split(fetched)
        if not by_task:
            return
        now = datetime.now(UTC)
        count = 0
        decided = []
        for task_id, (epoch, batch) in by_task.items():
            store = self.stores[task_id]
            records = [Record(r.topic, r.partition, r.offset, r.key, r.value)
                       for _tp, rs in batch for r in rs]
            count += len(records)
            offsets = next_offsets(batch)
            result = self.stages[task_id.stage].handle(task_id.partition, records, store, now)
            if trace.isEnabledFor(logging.DEBUG):  # LEADROUTER_TRACE=1 (chaos forensics)
                trace.debug("batch", extra={
                    "agent": task_id.stage, "generation": self.core.generation, "dropped": 0,
                    "ranges": {_name(tp): f"{rs[0].offset}-{rs[-1].offset}/{len(rs)}"
                               for tp, rs in batch}})
            task = self.core.tasks[task_id]
            inputs = {tp.topic: o for tp, o in {**task.positions, **offsets}.items()}
            result.writes.append((INPUT_OFFSETS, encode_offsets(inputs)))
            decided.append((task_id, epoch, offsets, result))
        handled = time.perf_counter()
        oldest: dict[str, int] = {}  # per input topic, for the hop breakdown (tracing only)
        if trace.isEnabledFor(logging.DEBUG):
            for tp, rs in fetched.items():
                if rs:
                    oldest[tp.topic] = min(oldest.get(tp.topic, rs[0].timestamp),
                                           rs[0].timestamp)
        if self.exactly_once:
            commits = []
            for d in decided:
                commit = asyncio.create_task(self._transact(*d))
                self._inflight[d[0]] = commit
                commits.append(commit)
            timer = asyncio.create_task(self._time_batch(started, handled, oldest, count,
                                                         commits))
            self._batch_timers.add(timer)
            timer.add_done_callback(self._batch_timers.discard)
            if not self.tuning.overlap_commits:
                await asyncio.wait(commits)
        else:
            await self._at_least_once(decided)
            await self._time_batch(started, handled, oldest, count, [])

    async def _time_batch(self, started: float, handled: float, oldest: dict[str, int],
                          count: int,
                          commits: Sequence[asyncio.Task[bool]]) -> None:
        handled_wall = time.time() * 1000 - (time.perf_counter() - handled) * 1000
        if commits:
            await asyncio.wait(commits)
        BATCH_EVENTS.observe(count)
        BATCH_SECONDS.observe(time.perf_counter() - started)
        if trace.isEnabledFor(logging.DEBUG):  # LEADROUTER_TRACE=1: the hop breakdown
            trace.debug("batch timing", extra={
                "tasks": len(commits), "records": count,
                "input_age_ms": {t: round(handled_wall - ts, 1) for t, ts in oldest.items()},
                "handle_ms": round((handled - started) * 1000, 2),
                "commit_ms": round((time.perf_counter() - handled) * 1000, 2)})

    async def _transact(self, task_id: TaskId, epoch: int,
                        offsets: dict[TopicPartition, int], result: TaskResult) -> bool:
        """Exactly-once: outputs, changelog and consumed offsets in ONE transaction. True
        when the batch was committed and applied to the task's store and positions."""
        producer = self.producers[task_id]
        stage = self.stages[task_id.stage]
        clock = _StepClock() if trace.isEnabledFor(logging.DEBUG) else None
        try:
            # 1. begin: everything below becomes visible to read_committed readers together
            await producer.begin_transaction()
            # 2. the outputs (transitions, assignments, routing records, dead letters...)
            acks = [await producer.send(out.topic, out.value, key=out.key,
                                        partition=out.partition) for out in result.outputs]
            # 3. the state, on the task's own changelog partition, with the input offsets
            sent = await _send_changelog(producer, stage.changelog, task_id.partition,
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
            last = await _last_offset(sent)
        except FENCED as exc:
            # another worker owns this task now (its producer took our transactional id):
            # abandon the batch, drop the state; the rebalance that made it so reaches us
            await self._abandon(task_id, epoch, "fenced", exc, wait_for_rebalance=True)
            return False
        except Exception as exc:  # a broker error, a timeout, a bug in a send path
            if await _abort(producer):  # outcome known: nothing of the batch is visible
                self._rewind(task_id, epoch, "aborted", exc)
            else:
                await self._abandon(task_id, epoch, "commit_unknown", exc)
            return False
        # 6. only now the local store: an aborted transaction must leave no trace in it
        applied = self.core.processed(task_id, epoch, offsets)
        if applied:
            self.stores[task_id].write(result.writes, last)
        _trace_commit(self.core.generation, offsets)
        if clock:
            trace.debug("txn", extra={"task": str(task_id), "outputs": len(result.outputs),
                                      "writes": len(result.writes), "ms": clock.steps})
        return applied

    async def _at_least_once(
        self, decided: list[tuple[TaskId, int, dict[TopicPartition, int], TaskResult]]
    ) -> None:
        """outputs acked -> changelog acked -> local store -> offsets committed."""
        producer = self.producer
        try:
            acks = [await producer.send(o.topic, o.value, key=o.key, partition=o.partition)
                    for _t, _e, _o, result in decided for o in result.outputs]
            await asyncio.gather(*acks)  # 1. every output is on the broker
            sent = [await _send_changelog(producer, self.stages[t.stage].changelog,
                                          t.partition, result.writes)
                    for t, _e, _o, result in decided]
            lasts = [await _last_offset(s) for s in sent]  # 2. and the state
        except KafkaError as exc:
            for task_id, epoch, _offsets, _result in decided:
                self._rewind(task_id, epoch, "send_failed", exc)
            return
        committed: dict[TopicPartition, int] = {}
        for (task_id, epoch, offsets, result), last in zip(decided, lasts, strict=True):
            if self.core.processed(task_id, epoch, offsets):
                self.stores[task_id].write(result.writes, last)  # 3. the local store
                committed.update(offsets)
        try:
            await self.consumer.commit(committed)  # 4. then the offsets
            _trace_commit(self.core.generation, committed)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # the changelog carries the offsets too: a new owner resumes after this batch
            log.warning("offset commit failed (rebalance?); the changelog has them",
                        extra={"error": repr(exc)})

    def _rewind(self, task_id: TaskId, epoch: int, reason: str, exc: BaseException) -> None:
        """Nothing of the batch was written: process it again from the task's positions."""
        self.aborted[reason] += 1
        BATCHES_ABANDONED.labels(reason).inc()
        log.warning("batch not committed; processing it again", extra={
            "task": str(task_id), "reason": reason, "error": repr(exc)})
        task = self.core.tasks.get(task_id)
        if task is None or task.epoch != epoch:
            return
        self.stages[task_id.stage].forget(task_id.partition)
        if task.phase is Phase.ACTIVE:
            with contextlib.suppress(IllegalStateError):
                self._seek(task)

    async def _abandon(self, task_id: TaskId, epoch: int, reason: str, exc: BaseException,
                       wait_for_rebalance: bool = False) -> None:
        self.aborted[reason] += 1
        BATCHES_ABANDONED.labels(reason).inc()
        log.warning("batch abandoned; the task's state is dropped and restored again",
                    extra={"task": str(task_id), "reason": reason, "error": repr(exc)})
        task = self.core.tasks.get(task_id)
        if task is None or not self.core.reset(task_id, epoch):
            return
        with contextlib.suppress(IllegalStateError):
            self.consumer.pause(*task.inputs)
        await self._close(task_id)
        if wait_for_rebalance:
            # re-initialising at once would fence the new owner in turn; give the rebalance
            # that made us a zombie time to arrive (it clears this), and retry regardless
            self._retry_at[task_id] = time.monotonic() + self.settings.session_timeout_seconds

    # ---- views -------------------------------------------------------------------------------

    def store(self, stage: str, partition: int) -> PartitionStore | None:
        task = self.core.tasks.get(TaskId(stage, partition))
        if task is None or task.phase is Phase.INITIALISING:
            return None
        return self.stores.get(task.id)

    def owns(self, stage: str, partition: int) -> bool:
        return self.store(stage, partition) is not None

    def positions(self) -> dict[TopicPartition, int]:
        return {tp: o for t in self.core.tasks.values() for tp, o in t.positions.items()}


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: PartitionProcessor) -> None:
        self.processor = processor

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.processor.on_revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.processor.on_assigned(assigned)


class _StepClock:
    """Milliseconds per step of one transaction (LEADROUTER_TRACE=1: the hop breakdown)."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}
        self._last = time.perf_counter()

    def step(self, name: str) -> None:
        now = time.perf_counter()
        self.steps[name] = round((now - self._last) * 1000, 2)
        self._last = now


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


def _trace_commit(generation: int, offsets: dict[TopicPartition, int]) -> None:
    if trace.isEnabledFor(logging.DEBUG):
        trace.debug("commit", extra={"ok": True, "generation": generation,
                                     "offsets": {_name(tp): o for tp, o in offsets.items()}})


async def _send_changelog(producer: AIOKafkaProducer, topic: str, partition: int,
                          writes: list[tuple[bytes, bytes | None]]
                          ) -> list[tuple[int, asyncio.Future[Any]]]:
    """One record batch per changelog partition (aiokafka's batch API: no per-record
    future, no per-record produce call); returns (records, delivery future) per batch."""
    sent: list[tuple[int, asyncio.Future[Any]]] = []
    batch, count = producer.create_batch(), 0
    for key, value in writes:
        if batch.append(key=key, value=value, timestamp=None) is None:  # full
            sent.append((count, await producer.send_batch(batch, topic, partition=partition)))
            batch, count = producer.create_batch(), 0
            batch.append(key=key, value=value, timestamp=None)  # a first record always fits
        count += 1
    if count:
        sent.append((count, await producer.send_batch(batch, topic, partition=partition)))
    return sent


async def _last_offset(sent: list[tuple[int, asyncio.Future[Any]]]) -> int | None:
    """The changelog offset of the last record sent (what RocksDB persists as applied)."""
    last = None
    for count, future in sent:
        metadata = await future
        last = metadata.offset + count - 1
    return last


async def _abort(producer: AIOKafkaProducer) -> bool:
    try:
        await asyncio.wait_for(producer.abort_transaction(), CLOSE_TIMEOUT_SECONDS)
        return True
    except Exception:  # fatal state, or the broker is away: the outcome is unknown
        return False


async def _stop_producer(producer: AIOKafkaProducer) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), CLOSE_TIMEOUT_SECONDS)


async def _discard(p: _Pending) -> None:
    if p.store is not None:
        p.store.close()
    if p.producer is not None:
        await _stop_producer(p.producer)
