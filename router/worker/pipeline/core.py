"""The pure part of the partition processor: which tasks this worker owns, in which phase,
where each resumes, which fetched records may be processed, and the assignment plan.

No I/O here (processor.py does it), so the rebalance and restore logic is unit-tested with
plain values: revoked in the middle of a batch, assigned during a restore, a fenced producer.

A *task* is one stage on one partition: ("leads", p) consumes partition p of touchpoints,
profiles, the recycle topic and sales activity (co-partitioned by lead), ("routing", 0) the
single routing partition. Each task has its own local state, changelog partition and (with
exactly-once) transactional producer.

Epochs: every time a task is (re)initialised it gets a new epoch. Work that awaited something
(a restore, a transaction) carries the epoch it started under and is applied only if the task
still has it: a restore finishing after its task was revoked and assigned again, or a batch
whose producer was fenced, can then never write into the current state.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, TypeVar

from aiokafka.structs import TopicPartition

LEADS = "leads"
ROUTING = "routing"


@dataclass(frozen=True, slots=True, order=True)
class TaskId:
    stage: str
    partition: int

    def __str__(self) -> str:
        return f"{self.stage}-{self.partition}"


class Phase(Enum):
    INITIALISING = "initialising"  # fence, restore, seek: none of its records is processed
    ACTIVE = "active"
    SUSPENDED = "suspended"  # revoked, waiting for the next assignment (eager rebalancing)


@dataclass(slots=True)
class Task:
    id: TaskId
    inputs: tuple[TopicPartition, ...]
    epoch: int
    phase: Phase = Phase.INITIALISING
    # next offset to process per input partition: known once the task is active, then
    # advanced only by batches whose outputs, state and offsets were written
    positions: dict[TopicPartition, int] = field(default_factory=dict)


@dataclass(slots=True)
class Changes:
    """What an assignment changed: tasks to keep running, to initialise, to close."""

    kept: list[Task] = field(default_factory=list)
    started: list[Task] = field(default_factory=list)
    dropped: list[Task] = field(default_factory=list)


class HasOffset(Protocol):
    @property
    def offset(self) -> int: ...


R = TypeVar("R", bound=HasOffset)


class Ownership:
    """The tasks this worker owns; every change goes through here (and only here)."""

    def __init__(self, stage_of_topic: Mapping[str, str]) -> None:
        self.stage_of_topic = dict(stage_of_topic)
        self.tasks: dict[TaskId, Task] = {}
        self.generation = -1
        self.rebalancing = False
        self._epochs = itertools.count(1)
        self.discarded = 0  # fetched records not processed (their task was not active)

    def task_of(self, tp: TopicPartition) -> TaskId:
        return TaskId(self.stage_of_topic[tp.topic], tp.partition)

    # ---- rebalances --------------------------------------------------------------------------

    def revoke_all(self) -> None:
        """Before a (eager) rebalance: nothing is processed until the next assignment says
        what stays. State is not dropped yet; most partitions stay where they are."""
        self.rebalancing = True
        for task in self.tasks.values():
            if task.phase is Phase.ACTIVE:
                task.phase = Phase.SUSPENDED

    def assign(self, assigned: Iterable[TopicPartition], generation: int) -> Changes:
        """The new assignment. A task is kept only if this worker owned it in the generation
        just before: otherwise another worker may have owned it meanwhile (this one was out of
        the group) and written state this worker's copy lacks, so it is initialised again."""
        wanted: dict[TaskId, list[TopicPartition]] = {}
        for tp in assigned:
            if tp.topic in self.stage_of_topic:
                wanted.setdefault(self.task_of(tp), []).append(tp)
        consecutive = generation == self.generation + 1
        changes = Changes()
        for task_id, task in list(self.tasks.items()):
            if task_id not in wanted or not consecutive:
                del self.tasks[task_id]
                changes.dropped.append(task)
        for task_id, tps in sorted(wanted.items()):
            held = self.tasks.get(task_id)
            if held is not None:
                if held.phase is Phase.SUSPENDED:
                    held.phase = Phase.ACTIVE
                changes.kept.append(held)
                continue
            task = Task(task_id, tuple(sorted(tps)), next(self._epochs))
            self.tasks[task_id] = task
            changes.started.append(task)
        self.generation = generation
        self.rebalancing = False
        return changes

    def lost(self) -> list[Task]:
        """The group was left (stop, or a fatal consumer error): every task goes."""
        dropped = list(self.tasks.values())
        self.tasks.clear()
        return dropped

    # ---- initialisation ----------------------------------------------------------------------

    def initialising(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.phase is Phase.INITIALISING]

    def is_current(self, task_id: TaskId, epoch: int) -> bool:
        task = self.tasks.get(task_id)
        return task is not None and task.epoch == epoch

    def activate(self, task_id: TaskId, epoch: int,
                 positions: Mapping[TopicPartition, int]) -> bool:
        """A restore finished: the task may process from `positions`. Refused (False) when the
        task was revoked or re-initialised while restoring (assigned during a restore)."""
        task = self.tasks.get(task_id)
        if task is None or task.epoch != epoch or task.phase is not Phase.INITIALISING:
            return False
        task.positions = {tp: positions[tp] for tp in task.inputs}
        task.phase = Phase.SUSPENDED if self.rebalancing else Phase.ACTIVE
        return True

    def reset(self, task_id: TaskId, epoch: int) -> bool:
        """The batch under `epoch` was abandoned with an unknown outcome (a fenced producer, a
        failed commit): drop what the task holds and initialise it again (fence, restore,
        resume from what was committed). False if the task already moved on."""
        task = self.tasks.get(task_id)
        if task is None or task.epoch != epoch:
            return False
        task.epoch = next(self._epochs)
        task.phase = Phase.INITIALISING
        task.positions = {}
        return True

    # ---- batches -----------------------------------------------------------------------------

    def split(self, fetched: Mapping[TopicPartition, Sequence[R]]
              ) -> dict[TaskId, tuple[int, list[tuple[TopicPartition, Sequence[R]]]]]:
        """Fetched records by active task (with the task's epoch). Records of a task that is
        not active are not processed: it resumes from its own positions when it is, so they
        are fetched again. Records before a task's position (delivered twice) are skipped."""
        out: dict[TaskId, tuple[int, list[tuple[TopicPartition, Sequence[R]]]]] = {}
        for tp, records in fetched.items():
            if not records:
                continue
            task = self.tasks.get(self.task_of(tp)) if tp.topic in self.stage_of_topic else None
            if task is None or task.phase is not Phase.ACTIVE:
                self.discarded += len(records)
                continue
            position = task.positions.get(tp, 0)
            if records[0].offset < position:
                records = [r for r in records if r.offset >= position]
                if not records:
                    continue
            entry = out.get(task.id)
            if entry is None:
                out[task.id] = (task.epoch, [(tp, records)])
            else:
                entry[1].append((tp, records))
        return out

    def processed(self, task_id: TaskId, epoch: int,
                  offsets: Mapping[TopicPartition, int]) -> bool:
        """A batch's outputs, state and offsets were written: advance the positions. False if
        the task changed meanwhile (then the caller must not apply the batch's state)."""
        task = self.tasks.get(task_id)
        if task is None or task.epoch != epoch or task.phase is Phase.INITIALISING:
            return False
        task.positions.update(offsets)
        return True

    # ---- views -------------------------------------------------------------------------------

    def active_partitions(self, stage: str) -> set[int]:
        return {t.id.partition for t in self.tasks.values()
                if t.id.stage == stage and t.phase is not Phase.INITIALISING}

    @property
    def settled(self) -> bool:
        """No rebalance in progress and every owned task restored."""
        return not self.rebalancing and all(
            t.phase is not Phase.INITIALISING for t in self.tasks.values())


def next_offsets(batch: Sequence[tuple[TopicPartition, Sequence[HasOffset]]]
                 ) -> dict[TopicPartition, int]:
    """The offsets to commit for a processed batch: one past the last record of each input
    partition (Kafka's committed offset is the next record to read)."""
    return {tp: records[-1].offset + 1 for tp, records in batch if records}


def resume_positions(inputs: Sequence[TopicPartition],
                     committed: Mapping[TopicPartition, int | None],
                     stored: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Where a newly initialised task resumes: the later of the group's committed offset and
    the one written with the task's state (its changelog's input-offsets record).

    They are equal once things settle. The stored one can be ahead: at-least-once, after a
    crash between the changelog ack and the commit (those records' outputs and state are
    written, so they are done); exactly-once, when the broker has not yet materialised the
    previous owner's transactional offset commit (aiokafka cannot ask for stable offsets,
    KIP-447's require_stable). The committed one can be ahead when the state store is older
    than the group (a RocksDB directory from an earlier run): the changelog replay brings it
    forward, and its input-offsets record with it, so the later of the two is right."""
    out: dict[TopicPartition, int] = {}
    for tp in inputs:
        known = [o for o in (committed.get(tp), stored.get(tp)) if o is not None and o >= 0]
        out[tp] = max(known) if known else 0
    return out


# ---- the assignment plan ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    member_id: str
    url: str
    owned: frozenset[int]  # lead partitions it held (stickiness)
    routing: bool  # held the routing partition


@dataclass(frozen=True, slots=True)
class Plan:
    leads: dict[str, list[int]]  # member id -> lead partitions
    routing: str  # member id of the routing owner

    def owners(self, members: Mapping[str, Member]) -> dict[str, object]:
        """What every member learns: who serves which partition (for the web views)."""
        return {
            "leads": {str(p): members[m].url for m, ps in self.leads.items() for p in ps},
            "routing": members[self.routing].url,
        }


def plan_assignment(members: Sequence[Member], partitions: int) -> Plan:
    """Co-partitioned (a lead partition's four topics go together), balanced (sizes differ
    by at most one), sticky (a member keeps what it held while within its quota, so a join or
    leave moves as few states as it can); the routing partition stays with its holder, or goes
    to the member with the fewest lead partitions."""
    if not members:
        raise ValueError("no members to assign to")
    ordered = sorted(members, key=lambda m: m.member_id)
    base, extra = divmod(partitions, len(ordered))
    quota = {m.member_id: base + (1 if i < extra else 0) for i, m in enumerate(ordered)}
    leads: dict[str, list[int]] = {m.member_id: [] for m in ordered}
    taken: set[int] = set()
    for m in ordered:
        for p in sorted(m.owned):
            if p < partitions and p not in taken and len(leads[m.member_id]) < quota[m.member_id]:
                leads[m.member_id].append(p)
                taken.add(p)
    free = [p for p in range(partitions) if p not in taken]
    for m in ordered:
        while len(leads[m.member_id]) < quota[m.member_id]:
            leads[m.member_id].append(free.pop(0))
    holders = [m.member_id for m in ordered if m.routing]
    routing = holders[0] if holders else min(
        ordered, key=lambda m: (len(leads[m.member_id]), m.member_id)).member_id
    return Plan({k: sorted(v) for k, v in leads.items()}, routing)
