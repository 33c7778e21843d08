"""The partition processor's pure bookkeeping (router.worker.pipeline.core): the rebalance and
restore sequences that lost records under faust, replayed as plain values.

The invariant under test: a record is processed only by an active task at or after that
task's position; positions advance only for batches reported written; and any task that was
(or may have been) owned elsewhere in between starts again from what was committed.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from aiokafka.structs import TopicPartition

from router.worker.pipeline.core import (
    LEADS,
    ROUTING,
    Member,
    Ownership,
    Phase,
    TaskId,
    next_offsets,
    plan_assignment,
    resume_positions,
)

TOUCH, PROFILE, ROUTE = "t.touchpoints", "t.profiles", "t.routing"
STAGES = {TOUCH: LEADS, PROFILE: LEADS, ROUTE: ROUTING}


@dataclass(frozen=True)
class Rec:
    offset: int


def tps(*partitions: int) -> list[TopicPartition]:
    return [TopicPartition(t, p) for p in partitions for t in (TOUCH, PROFILE)]


def recs(first: int, last: int) -> list[Rec]:
    return [Rec(o) for o in range(first, last + 1)]


def active(own: Ownership, partition: int, positions: dict[TopicPartition, int] | None = None
           ) -> int:
    """Initialise and activate the leads task of `partition`; returns its epoch."""
    task = own.tasks[TaskId(LEADS, partition)]
    pos = positions or {tp: 0 for tp in task.inputs}
    assert own.activate(task.id, task.epoch, pos)
    return task.epoch


def test_new_tasks_process_nothing_until_restored() -> None:
    own = Ownership(STAGES)
    changes = own.assign([*tps(0, 1), TopicPartition(ROUTE, 0)], generation=1)
    assert [t.id for t in changes.started] == [TaskId(LEADS, 0), TaskId(LEADS, 1),
                                               TaskId(ROUTING, 0)]
    fetched = {TopicPartition(TOUCH, 0): recs(0, 9)}
    assert own.split(fetched) == {}  # fetched during the restore: dropped, fetched again
    assert own.discarded == 10
    assert not own.settled
    epoch = active(own, 0)
    batch = own.split(fetched)
    assert batch == {TaskId(LEADS, 0): (epoch, [(TopicPartition(TOUCH, 0), recs(0, 9))])}


def test_positions_advance_only_for_written_batches_and_skip_redeliveries() -> None:
    own = Ownership(STAGES)
    own.assign(tps(0), generation=1)
    tp = TopicPartition(TOUCH, 0)
    epoch = active(own, 0, {tp: 5, TopicPartition(PROFILE, 0): 0})
    (_, batch), = own.split({tp: recs(3, 8)}).values()  # 3 and 4 were processed already
    assert batch == [(tp, recs(5, 8))]
    # not reported written (a crash, an abort): the position stays, the records come again
    assert own.tasks[TaskId(LEADS, 0)].positions[tp] == 5
    assert own.processed(TaskId(LEADS, 0), epoch, next_offsets(batch))
    assert own.tasks[TaskId(LEADS, 0)].positions[tp] == 9
    assert own.split({tp: recs(5, 8)}) == {}  # all of it delivered twice


def test_revoked_in_the_middle_of_a_batch() -> None:
    """The revocation waits for the batch in flight (the processor's lock), then suspends:
    records fetched meanwhile are not processed, and a partition that stays keeps its state
    and position; one that moves is dropped, and the batch result is not applied to it."""
    own = Ownership(STAGES)
    own.assign(tps(0, 1), generation=1)
    e0, e1 = active(own, 0), active(own, 1)
    tp0, tp1 = TopicPartition(TOUCH, 0), TopicPartition(TOUCH, 1)
    batch = own.split({tp0: recs(0, 4), tp1: recs(0, 4)})
    assert own.processed(TaskId(LEADS, 0), e0, next_offsets(batch[TaskId(LEADS, 0)][1]))
    own.revoke_all()
    assert own.split({tp0: recs(5, 9)}) == {}  # suspended
    changes = own.assign(tps(0), generation=2)  # partition 1 went to another worker
    assert [t.id for t in changes.kept] == [TaskId(LEADS, 0)]
    assert [t.id for t in changes.dropped] == [TaskId(LEADS, 1)]
    assert own.tasks[TaskId(LEADS, 0)].phase is Phase.ACTIVE
    assert own.tasks[TaskId(LEADS, 0)].positions[tp0] == 5  # the processor seeks here
    # a batch of the dropped task that finishes late must not write anything
    assert not own.processed(TaskId(LEADS, 1), e1, {tp1: 5})


def test_a_missed_generation_reinitialises_everything() -> None:
    """Out of the group for a while (generation 1 -> 3): in generation 2 another worker may
    have owned our partitions and written state we lack; nothing is kept."""
    own = Ownership(STAGES)
    own.assign(tps(0), generation=1)
    active(own, 0)
    own.revoke_all()
    changes = own.assign(tps(0), generation=3)
    assert [t.id for t in changes.dropped] == [TaskId(LEADS, 0)]
    assert [t.id for t in changes.started] == [TaskId(LEADS, 0)]
    assert own.tasks[TaskId(LEADS, 0)].phase is Phase.INITIALISING


def test_assigned_during_a_restore() -> None:
    """A restore still running when its task is revoked and assigned again (a new epoch):
    the stale restore's activation is refused, the new one restores from the start."""
    own = Ownership(STAGES)
    own.assign(tps(0), generation=1)
    stale = own.tasks[TaskId(LEADS, 0)].epoch
    own.revoke_all()
    own.assign([], generation=2)  # moved away...
    own.revoke_all()
    own.assign(tps(0), generation=3)  # ...and back
    fresh = own.tasks[TaskId(LEADS, 0)].epoch
    assert fresh != stale
    assert not own.is_current(TaskId(LEADS, 0), stale)
    assert not own.activate(TaskId(LEADS, 0), stale, {tp: 0 for tp in tps(0)})
    assert own.tasks[TaskId(LEADS, 0)].phase is Phase.INITIALISING
    assert own.activate(TaskId(LEADS, 0), fresh, {tp: 7 for tp in tps(0)})


def test_restore_finishing_during_a_rebalance_waits_for_the_assignment() -> None:
    own = Ownership(STAGES)
    own.assign(tps(0), generation=1)
    epoch = own.tasks[TaskId(LEADS, 0)].epoch
    own.revoke_all()  # a rebalance starts while restoring
    assert own.activate(TaskId(LEADS, 0), epoch, {tp: 3 for tp in tps(0)})
    assert own.tasks[TaskId(LEADS, 0)].phase is Phase.SUSPENDED  # no seek on a stale assignment
    assert own.split({TopicPartition(TOUCH, 0): recs(3, 4)}) == {}
    changes = own.assign(tps(0), generation=2)
    assert changes.kept[0].phase is Phase.ACTIVE and changes.kept[0].positions[tps(0)[0]] == 3


def test_fenced_producer_abandons_the_batch_and_reinitialises() -> None:
    own = Ownership(STAGES)
    own.assign(tps(0), generation=1)
    epoch = active(own, 0, {tp: 10 for tp in tps(0)})
    tp = TopicPartition(TOUCH, 0)
    (_, batch), = own.split({tp: recs(10, 19)}).values()
    assert own.reset(TaskId(LEADS, 0), epoch)  # ProducerFenced while committing
    task = own.tasks[TaskId(LEADS, 0)]
    assert task.phase is Phase.INITIALISING and task.positions == {}
    assert not own.processed(TaskId(LEADS, 0), epoch, next_offsets(batch))
    assert not own.reset(TaskId(LEADS, 0), epoch)  # only once per epoch
    assert own.split({tp: recs(10, 19)}) == {}  # nothing until restored again
    # and it resumes from what the new restore finds committed, not from the lost batch
    assert own.activate(task.id, task.epoch, {t: 10 for t in task.inputs})
    assert own.tasks[task.id].positions[tp] == 10


def test_stop_drops_every_task() -> None:
    own = Ownership(STAGES)
    own.assign(tps(0, 1), generation=1)
    assert len(own.lost()) == 2 and own.tasks == {}


@pytest.mark.parametrize(("committed", "stored", "expected"), [
    (None, None, 0),  # nothing yet: the beginning
    (40, None, 40),
    (None, 40, 40),  # committed offsets not materialised yet (or never made: at-least-once)
    (40, 55, 55),  # the changelog's batch is done: its outputs and state are written
    (55, 40, 55),  # an old RocksDB directory behind the group: the group is right
])
def test_resume_positions(committed: int | None, stored: int | None, expected: int) -> None:
    tp = TopicPartition(TOUCH, 0)
    stored_map = {tp: stored} if stored is not None else {}
    assert resume_positions([tp], {tp: committed}, stored_map) == {tp: expected}


def test_next_offsets_is_one_past_the_last_record() -> None:
    tp = TopicPartition(TOUCH, 0)
    assert next_offsets([(tp, recs(4, 9))]) == {tp: 10}


def members(*specs: tuple[str, set[int], bool]) -> list[Member]:
    return [Member(m, f"http://{m}", frozenset(owned), routing) for m, owned, routing in specs]


def test_plan_is_balanced_co_partitioned_and_complete() -> None:
    plan = plan_assignment(members(("a", set(), False), ("b", set(), False),
                                   ("c", set(), False)), 8)
    sizes = sorted(len(v) for v in plan.leads.values())
    assert sizes == [2, 3, 3]
    assert sorted(p for v in plan.leads.values() for p in v) == list(range(8))
    assert plan.routing in plan.leads


def test_plan_is_sticky_on_join_and_keeps_the_routing_holder() -> None:
    before = plan_assignment(members(("a", set(), False)), 8)
    assert before.leads["a"] == list(range(8))
    after = plan_assignment(members(("a", set(range(8)), True), ("b", set(), False)), 8)
    assert after.routing == "a"
    assert len(after.leads["a"]) == len(after.leads["b"]) == 4
    assert set(after.leads["a"]) <= set(range(8))  # a keeps 4 of its own; only 4 move
    # a leave gives the leaver's partitions to the stayer, which keeps its own
    left = plan_assignment(members(("b", set(after.leads["b"]), False)), 8)
    assert left.leads["b"] == list(range(8)) and left.routing == "b"


def test_plan_owner_map_names_every_partition() -> None:
    ms = members(("a", set(), False), ("b", set(), False))
    plan = plan_assignment(ms, 4)
    owners = plan.owners({m.member_id: m for m in ms})
    assert sorted(owners["leads"]) == ["0", "1", "2", "3"]  # type: ignore[arg-type]
    assert owners["routing"] in ("http://a", "http://b")


def test_plan_needs_a_member() -> None:
    with pytest.raises(ValueError):
        plan_assignment([], 8)
