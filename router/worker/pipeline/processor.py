"""The partition processor's runtime: one consumer-group member on plain aiokafka, batched,
exactly-once on Apache Kafka, at-least-once on brokers without transactions (Tansu).

Loop (one coroutine decides; with exactly-once a task's commit runs beside the loop):
  1. initialise the tasks that need it (new assignment, or reset after a fenced producer):
     a. exactly-once: start the task's transactional producer, which fences the previous
        owner's; b. restore the task's store from its changelog partition, to the end;
     c. resume each input partition at the later of the group's committed offset (fetched
        after the fence) and the offsets the changelog carries (restore.py has the details);
  2. getmany, split by task (core.split: only active tasks' records are processed);
  3. per task, the stage's pure handler decides (outputs + state writes);
  (Steps 1a and 4 as written here are the per-task scope, worker_transactions=0. The default
  runs one transaction per worker for every task decided meanwhile, fenced by the group
  generation instead of a producer per task: worker_txn.py, and restore.py for step 1.)
  4. commit, exactly-once, per task, in ONE transaction of the task's producer:
        begin -> outputs -> changelog (state + input offsets) -> produce acks ->
        consumed offsets (send_offsets_to_transaction, the group's commit) -> commit
     and only then write the local store and advance the positions; the commit runs beside
     the loop, and a task's next batch is decided once its commit is known (eos_commit.py
     has the order, the overlap and the outcomes). With one transaction per worker the
     next batch is decided at once, on the writes not yet committed (pending.py);
  4'. at-least-once (Tansu): outputs sent and acked, then the changelog records acked, then
     the local store written, then the offsets committed (alo_commit.py).

A batch that was not committed is processed again from the task's positions (rewind), or,
when its outcome is unknown or its producer was fenced, the task's state is dropped and the
task initialised again (abandon); both are here, as the commits' TaskControl.

Rebalances (eager, aiokafka's listener): on revocation the listener waits for the batch in
flight to finish (the lock) and suspends every task; the assignment then keeps the tasks
owned in the previous generation (state and positions kept), closes the others and pauses
the new ones until step 1 has initialised them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import IllegalStateError, KafkaError, TopicAlreadyExistsError
from aiokafka.structs import TopicPartition

from router.adapters.topics import compacted_topic_configs
from router.metrics import BATCH_EVENTS, BATCH_SECONDS, BATCHES_ABANDONED
from router.records import Output, Record, StageResult
from router.settings import Settings, bootstrap_servers
from router.worker.pipeline import kip447
from router.worker.pipeline.alo_commit import AtLeastOnceCommits
from router.worker.pipeline.assignor import CoPartitionedAssignor
from router.worker.pipeline.commit import failure_hint, make_producer, stop_producer
from router.worker.pipeline.core import (
    Ownership,
    Phase,
    Task,
    TaskId,
    next_offsets,
    resume_positions,
)
from router.worker.pipeline.eos_commit import ExactlyOnceCommits
from router.worker.pipeline.loggers import log, tp_name, trace
from router.worker.pipeline.restore import Pending, Restorer, discard
from router.worker.pipeline.stage import Decision, StageSpec
from router.worker.pipeline.store import INPUT_OFFSETS, PartitionStore, encode_offsets
from router.worker.pipeline.txn_tuning import TxnTuning
from router.worker.pipeline.worker_txn import WorkerTransactions, worker_transactional_id

RETRY_SECONDS = 1.0
IDLE_FETCH_MS = 100
HELD_POLL_MS = 2


class PartitionProcessor:
    def __init__(self, settings: Settings, stages: Sequence[StageSpec], *, exactly_once: bool,
                 read_committed: bool, assignor: CoPartitionedAssignor,
                 tuning: TxnTuning | None = None) -> None:
        self.settings = settings
        self.stages = {s.name: s for s in stages}
        self.exactly_once = exactly_once
        self.read_committed = read_committed
        self.assignor = assignor
        self.group_id = settings.app_id
        self.bootstrap = bootstrap_servers(settings.broker)
        self.client = settings.kafka_client_kwargs()
        self.core = Ownership({t: s.name for s in stages for t in s.topics})
        self.tuning = TxnTuning.from_env() if tuning is None else tuning
        self.tuning.apply()
        self.stores: dict[TaskId, PartitionStore] = {}
        self.producers: dict[TaskId, AIOKafkaProducer] = {}  # exactly-once: one per task
        self.restorer = Restorer(settings, self.core, [s.table for s in stages],
                                 exactly_once=exactly_once, read_committed=read_committed,
                                 tuning=self.tuning, bootstrap=self.bootstrap,
                                 client=self.client)
        self.restored = self.restorer.restored  # table -> changelog records restored
        self.aborted: Counter[str] = Counter()  # reason -> batches abandoned
        self.assigned_once = False
        self.started = False
        self._lock = asyncio.Lock()
        # exactly-once: each task's commit in flight, and the records fetched meanwhile for
        # those tasks (empty at-least-once)
        self.eos = (WorkerTransactions(
            self.core, self.stages, self.stores, group_id=self.group_id, tuning=self.tuning,
            control=self, make_producer=self._transactional_producer,
            transactional_id=worker_transactional_id(settings.app_id),
            group=lambda: kip447.group_metadata(self.consumer, self.group_id))
            if self.tuning.worker_transactions
            else ExactlyOnceCommits(self.core, self.stages, self.stores, self.producers,
                                    group_id=self.group_id, tuning=self.tuning, control=self))
        self.alo = AtLeastOnceCommits(self.core, self.stages, self.stores, control=self)
        # topic -> the one-partition stage that takes other stages' outputs to it in process
        # (`_direct`): only with one transaction per worker, whose _fail drops them together
        self.direct_stages = ({t: s.name for s in stages if s.direct is not None
                               and s.partitions == 1 for t in s.topics}
                              if exactly_once and isinstance(self.eos, WorkerTransactions)
                              and self.tuning.direct_delivery else {})
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

    def _transactional_producer(self, transactional_id: str) -> AIOKafkaProducer:
        return make_producer(self.settings, self.tuning, transactional_id)

    async def start(self) -> None:
        if self.exactly_once and self.tuning.worker_transactions:
            kip447.install()
        await self._ensure_changelogs()
        s = self.settings
        self._producer = make_producer(s, self.tuning)
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
        log.info("partition processor started", extra={
            "guarantee": "exactly_once" if self.exactly_once else "at_least_once",
            "transactions": ("per_worker" if isinstance(self.eos, WorkerTransactions)
                             else "per_task") if self.exactly_once else None})

    async def stop(self) -> None:
        async with self._lock:  # the batch in flight finishes first
            await self._drain()
            self.started = False
            for task in self.core.lost():
                await self._close(task.id)
        if isinstance(self.eos, WorkerTransactions):
            await self.eos.stop()
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
                    timeout_ms=HELD_POLL_MS if self.eos.held else wait_ms, max_records=most)
            except KafkaError as exc:
                log.warning("fetch failed; retrying", extra={"error": repr(exc)})
                fetched = {}
            if fetched or self.eos.held:
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
                    self.seek(task)  # aiokafka reset them to the committed offsets
                else:
                    self.consumer.pause(*task.inputs)
            self.assigned_once = True
            log.info("partitions assigned", extra={
                "generation": generation,
                "kept": [str(t.id) for t in changes.kept],
                "started": [str(t.id) for t in changes.started],
                "dropped": [str(t.id) for t in changes.dropped]})

    async def _drain(self) -> None:
        await self.eos.drain()

    def seek(self, task: Task) -> None:
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
            await stop_producer(producer)

    # ---- initialisation ----------------------------------------------------------------------

    async def _initialise(self, tasks: list[Task]) -> None:
        pending = [Pending(t, t.epoch, self.stages[t.id.stage]) for t in tasks]
        try:
            committed = await self.restorer.prepare(pending, self.consumer)  # (a), (b), (c)
        except Exception as exc:  # broker away, RocksDB still locked by a previous owner...
            log.warning("task initialisation failed; retrying", extra={
                "tasks": [str(p.task.id) for p in pending], "error": repr(exc)})
            for p in pending:
                await discard(p)
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
                await discard(p)  # revoked (or reassigned) while restoring
                continue
            p.stage.forget(task.id.partition)  # derived state is rebuilt from this store
            self.stores[task.id] = store
            if p.producer is not None:
                self.producers[task.id] = p.producer
            self._retry_at.pop(task.id, None)
            if task.phase is Phase.ACTIVE:
                self.seek(task)
            log.info("task ready", extra={"task": str(task.id), "positions": {
                f"{tp.topic}[{tp.partition}]": o for tp, o in positions.items()}})

    # ---- batches -----------------------------------------------------------------------------

    async def _process(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        started = time.perf_counter()
        # the broker may be behind, or one transaction holds a fetch's worth already
        await self.eos.wait_for_room(self.settings.batch_size,
                                     sum(len(rs) for rs in fetched.values()))
        if self.eos.inflight or self.eos.held:
            fetched = self.eos.admit(fetched)
        by_task = self.core.split(fetched)
        if not by_task:
            self.eos.flush()  # one producer per worker: a transaction may wait for this
            return
        now = datetime.now(UTC)
        decided: list[Decision] = []
        commits: list[asyncio.Future[bool]] = []
        self.eos.deciding = True
        try:
            await self._decide(by_task, now, decided, commits)
        finally:
            self.eos.deciding = False
        count = sum(len(rs) for _e, batch in by_task.values() for _tp, rs in batch)
        handled = time.perf_counter()
        oldest: dict[str, int] = {}  # per input topic, for the hop breakdown (tracing only)
        if trace.isEnabledFor(logging.DEBUG):
            for tp, rs in fetched.items():
                if rs:
                    oldest[tp.topic] = min(oldest.get(tp.topic, rs[0].timestamp),
                                           rs[0].timestamp)
        if self.exactly_once:
            self.eos.flush()  # one producer per worker: every task decided here in one
            timer = asyncio.create_task(self._time_batch(started, handled, oldest, count,
                                                         commits))
            self._batch_timers.add(timer)
            timer.add_done_callback(self._batch_timers.discard)
            if commits and not self.tuning.overlap_commits:
                await asyncio.wait(commits)
        else:
            await self.alo.commit(decided, self.producer, self.consumer)  # alo_commit.py
            await self._time_batch(started, handled, oldest, count, [])

    async def _decide(self, by_task: dict[TaskId, tuple[int, list[tuple[TopicPartition, Any]]]],
                      now: datetime, decided: list[Decision],
                      commits: list[asyncio.Future[bool]]) -> None:
        """Each task's batch, one task at a time: exactly-once hands each decision over at
        once, at-least-once collects them for one commit. A stage taking records in process
        decides its own fetched records first, so they keep their place before the ones
        handed over."""
        order = sorted(by_task.items(),
                       key=lambda item: self.stages[item[0].stage].direct is None)
        for task_id, (epoch, batch) in order:
            task = self.core.tasks.get(task_id)
            if task is None or task.epoch != epoch or task.phase is not Phase.ACTIVE:
                continue  # reset by a failed commit meanwhile: fetched again once ready
            if self.eos.holds_records_of(task_id):  # its transaction failed meanwhile
                self.eos.hold(batch)
                continue
            # the store, and with one transaction per worker the task's writes not yet
            # committed over it (pending.py)
            store = self.eos.view(task_id, self.stores[task_id])
            records = [Record(r.topic, r.partition, r.offset, r.key, r.value)
                       for _tp, rs in batch for r in rs]
            offsets = next_offsets(batch)
            result = self.stages[task_id.stage].handle(task_id.partition, records, store, now)
            if trace.isEnabledFor(logging.DEBUG):  # LEADROUTER_TRACE=1 (chaos forensics)
                trace.debug("batch", extra={
                    "agent": task_id.stage, "generation": self.core.generation, "dropped": 0,
                    "ranges": {tp_name(tp): f"{rs[0].offset}-{rs[-1].offset}/{len(rs)}"
                               for tp, rs in batch}})
            inputs = {tp.topic: o for tp, o in {**self.eos.positions(task), **offsets}.items()}
            result.writes.append((INPUT_OFFSETS, encode_offsets(inputs)))
            decision = (task_id, epoch, offsets, result)
            if not self.exactly_once:
                decided.append(decision)  # one commit after the batch, nothing beside it
                continue
            # with the stages that took some of its outputs in process: they commit together
            direct = self._direct(result, now) if self.direct_stages else []
            commits += self.eos.start([decision, *direct], len(records), coupled=bool(direct))
            # the commit in flight and the group's heartbeats go on between tasks: every
            # task's batch in one go blocked the loop for a second under load (issue 17)
            await asyncio.sleep(0)

    def _direct(self, result: StageResult, now: datetime) -> list[Decision]:
        """The outputs bound for a one-partition stage this worker owns (the qualifier's route
        requests), applied by that stage now, in the transaction that publishes them
        (txn_tuning: direct_delivery): `lead.assigned` is one commit after the touchpoint
        instead of two commits and a fetch. The decision carries the stage's input offsets
        unchanged, so the transaction holds them: a new owner's OffsetFetch (require_stable)
        waits for it before restoring the changelog. The published copies are marked, and the
        stage skips them when it reads them back (stage.DirectInput)."""
        bound: dict[TaskId, list[Output]] = {}
        for out in result.outputs:
            stage = self.direct_stages.get(out.topic)
            if stage is not None and out.partition in (None, 0):
                bound.setdefault(TaskId(stage, 0), []).append(out)
        decisions: list[Decision] = []
        for task_id, outputs in bound.items():
            task = self.core.tasks.get(task_id)
            if (task is None or task.phase is not Phase.ACTIVE or task_id not in self.stores
                    or self.eos.holds_records_of(task_id)):
                continue  # restoring, or its transaction just failed: through the topic
            spec = self.stages[task_id.stage]
            assert spec.direct is not None
            records = [Record(out.topic, 0, -1, out.key, out.value) for out in outputs]
            taken = spec.direct.handle(0, records, self.eos.view(task_id, self.stores[task_id]),
                                       now)
            for out in outputs:
                out.value = spec.direct.published(out.value)
            positions = self.eos.positions(task)
            taken.writes.append((INPUT_OFFSETS, encode_offsets(
                {tp.topic: o for tp, o in positions.items()})))
            decisions.append((task_id, task.epoch, positions, taken))
        return decisions

    async def _time_batch(self, started: float, handled: float, oldest: dict[str, int],
                          count: int,
                          commits: Sequence[asyncio.Future[bool]]) -> None:
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

    def rewind(self, task_id: TaskId, epoch: int, reason: str, exc: BaseException) -> None:
        """Nothing of the batch was written: process it again from the task's positions."""
        self.aborted[reason] += 1
        BATCHES_ABANDONED.labels(reason).inc()
        log.warning("batch not committed; processing it again", extra={
            "task": str(task_id), "reason": reason, "error": repr(exc), **failure_hint(exc)})
        task = self.core.tasks.get(task_id)
        if task is None or task.epoch != epoch:
            return
        self.stages[task_id.stage].forget(task_id.partition)
        if task.phase is Phase.ACTIVE:
            with contextlib.suppress(IllegalStateError):
                self.seek(task)

    async def abandon(self, task_id: TaskId, epoch: int, reason: str, exc: BaseException,
                      wait_for_rebalance: bool = False) -> None:
        self.aborted[reason] += 1
        BATCHES_ABANDONED.labels(reason).inc()
        log.warning("batch abandoned; the task's state is dropped and restored again",
                    extra={"task": str(task_id), "reason": reason, "error": repr(exc),
                           **failure_hint(exc)})
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
