"""The writes a task decided and has not committed (router/worker/pipeline/pending.py): its
next batch reads them over the store, a commit forgets only what no later batch rewrote, and
a failed transaction drops them all."""

from __future__ import annotations

from aiokafka.structs import TopicPartition

from router.worker.pipeline.core import LEADS, TaskId
from router.worker.pipeline.pending import PendingWrites
from router.worker.pipeline.store import INPUT_OFFSETS, MemoryStore

TASK, OTHER = TaskId(LEADS, 0), TaskId(LEADS, 1)
TP, TP2 = TopicPartition("t", 0), TopicPartition("p", 0)


def store_with(**values: bytes) -> MemoryStore:
    store = MemoryStore()
    store.write([(k.encode(), v) for k, v in values.items()], None)
    return store


def test_the_next_batch_reads_pending_writes_and_deletes_over_the_store() -> None:
    store = store_with(a=b"1", b=b"2")
    pending = PendingWrites()
    assert pending.view(TASK, store) is store and TASK not in pending
    pending.add(TASK, {TP: 10}, [(b"a", b"new"), (b"b", None), (b"c", b"3"),
                                 (INPUT_OFFSETS, b"{}")])
    view = pending.view(TASK, store)
    assert (view.get(b"a"), view.get(b"b"), view.get(b"c")) == (b"new", None, b"3")
    assert dict(view.items()) == {b"a": b"new", b"c": b"3"}  # no meta key among the state
    assert pending.view(OTHER, store) is store  # another task's writes are not its own
    assert store.get(b"a") == b"1"  # the store holds only what was committed


def test_a_commit_forgets_only_what_no_later_batch_wrote_again() -> None:
    pending = PendingWrites()
    first = [(b"a", b"first"), (b"b", b"first")]
    pending.add(TASK, {TP: 10, TP2: 4}, first)
    pending.add(TASK, {TP: 20}, [(b"b", b"second")])
    assert pending.positions(TASK, {TP: 5, TP2: 1}) == {TP: 20, TP2: 4}
    store = store_with()
    store.write(first, None)
    pending.committed(TASK, {TP: 10, TP2: 4}, first)
    view = pending.view(TASK, store)
    assert view.get(b"a") == b"first" and view.get(b"b") == b"second"
    assert pending.positions(TASK, {TP: 10, TP2: 4}) == {TP: 20, TP2: 4}
    pending.committed(TASK, {TP: 20}, [(b"b", b"second")])
    assert TASK not in pending and pending.view(TASK, store) is store


def test_dropped_writes_leave_the_committed_store() -> None:
    store = store_with(a=b"1")
    pending = PendingWrites()
    pending.add(TASK, {TP: 10}, [(b"a", b"2")])
    pending.add(OTHER, {TP2: 3}, [(b"z", b"9")])
    pending.drop(TASK)
    assert pending.view(TASK, store) is store and pending.positions(TASK, {TP: 5}) == {TP: 5}
    assert OTHER in pending
    pending.clear()
    assert OTHER not in pending
