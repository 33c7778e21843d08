"""The faust consumer fixes (router.worker.faust_fixes) and the commit-stall guard, on plain
stand-ins for faust's consumer: each fix is shown to change faust's own decision."""

from __future__ import annotations

import logging
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport import consumer as faust_consumer
from faust.types import TP
from intervaltree import IntervalTree

from router.worker.faust_fixes import (
    GenerationCheckedReadOffsets,
    check_read_offset_generation,
    refuse_input_gaps,
)
from router.worker.stall_guard import StallGuard

INPUT = TP("leads.touchpoints", 3)
OTHER = TP("someone-elses-topic", 0)
log = logging.getLogger("test")


def fake_consumer(committed: int | None, acked: list[int], generation: int = 5) -> Any:
    c = SimpleNamespace()
    c._acked = defaultdict(list)
    c._acked_index = defaultdict(set)
    c._gap = defaultdict(IntervalTree)
    c._committed_offset = defaultdict(lambda: None)
    for tp in (INPUT, OTHER):
        c._acked[tp] = list(acked)
        c._acked_index[tp] = set(acked)
        c._committed_offset[tp] = committed
    c.app = SimpleNamespace(consumer_generation_id=generation)
    return c


@pytest.fixture(autouse=True)
def gapless_inputs() -> Any:
    refuse_input_gaps(frozenset({INPUT.topic}), log)
    yield
    refuse_input_gaps(frozenset(), log)


def new_offset(c: Any, tp: TP) -> int | None:
    result: int | None = faust_consumer.Consumer._new_offset(c, tp)
    return result


def test_contiguous_acks_commit_as_before() -> None:
    c = fake_consumer(committed=10, acked=[10, 11, 12])
    assert new_offset(c, INPUT) == 13


def test_one_missing_record_is_not_committed_over_on_inputs() -> None:
    # faust alone commits 14 here (it tolerates min(acked) == committed + 1): record 10 lost
    assert new_offset(fake_consumer(committed=10, acked=[11, 12, 13]), OTHER) == 14
    assert new_offset(fake_consumer(committed=10, acked=[11, 12, 13]), INPUT) is None


async def test_a_jump_in_fetched_offsets_is_not_recorded_as_a_gap_on_inputs() -> None:
    c = fake_consumer(committed=10, acked=[])
    await faust_consumer.Consumer._add_gap(c, INPUT, 11, 20)
    await faust_consumer.Consumer._add_gap(c, OTHER, 11, 20)
    assert not c._gap[INPUT]
    assert c._gap[OTHER]  # faust's behaviour kept for topics that may have real gaps


def test_read_offset_of_a_record_from_an_older_generation_is_ignored() -> None:
    c = fake_consumer(committed=10, acked=[], generation=7)
    offsets = GenerationCheckedReadOffsets(c, {INPUT: 10})
    c._leadrouter_delivering = SimpleNamespace(tp=INPUT, offset=25, generation_id=6)
    offsets[INPUT] = 25  # the fetch loop after a delivery that straddled a rebalance
    assert offsets[INPUT] == 10
    c._leadrouter_delivering = SimpleNamespace(tp=INPUT, offset=11, generation_id=7)
    offsets[INPUT] = 11
    assert offsets[INPUT] == 11
    assert offsets[OTHER] is None  # still a defaultdict of None, as faust expects


def test_installing_the_generation_check_is_idempotent() -> None:
    check_read_offset_generation()
    init = faust_consumer.Consumer.__init__
    check_read_offset_generation()
    assert faust_consumer.Consumer.__init__ is init


class FakeApp:
    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.rebalancing = False
        self.in_recovery = False


async def test_stall_guard_seeks_back_after_three_checks_with_the_same_committed() -> None:
    c = fake_consumer(committed=10, acked=[11, 12])
    sought: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    c.seek = seek
    c.assignment = lambda: {INPUT}
    c._read_offset = {INPUT: 12}
    guard = StallGuard([INPUT.topic])
    app = FakeApp(c)
    assert await guard.check_commits(app) == set()
    assert await guard.check_commits(app) == set()
    assert await guard.check_commits(app) == {INPUT}
    assert sought == [(INPUT, 10)]
    assert INPUT not in c._acked  # the stale acks are dropped with the seek
    assert guard.commit_stalls_repaired == 1


async def test_stall_guard_leaves_progressing_and_rebalancing_partitions_alone() -> None:
    c = fake_consumer(committed=10, acked=[10, 11])
    c.assignment = lambda: {INPUT}
    guard = StallGuard([INPUT.topic])
    app = FakeApp(c)
    for _ in range(5):
        assert await guard.check_commits(app) == set()
    c = fake_consumer(committed=10, acked=[12])
    c.assignment = lambda: {INPUT}
    app = FakeApp(c)
    app.rebalancing = True
    for _ in range(5):
        assert await guard.check_commits(app) == set()
