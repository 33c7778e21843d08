"""The restore's pure decisions (router/worker/pipeline/restore.py) with a fake consumer (no
broker): where the end of a changelog is (the last stable offset reading read_committed, else
the high watermark: never ListOffsets, which Tansu answers wrongly), and what a discarded
initialisation closes. Restores against the real broker: tests/integration/test_recovery.py,
test_compacted_restore.py, test_rocksdb_store.py."""

from __future__ import annotations

from aiokafka.structs import TopicPartition

from router.settings import Settings
from router.worker.pipeline.core import Ownership
from router.worker.pipeline.restore import Pending, Restorer, discard
from router.worker.pipeline.store import MemoryStore
from router.worker.pipeline.txn_tuning import TxnTuning
from tests.unit.pipeline_fakes import TASK, FakeProducer, active_core, stage

CHANGELOG = TopicPartition("t.changelog", 0)


class EndsConsumer:
    def __init__(self, position: int, lso: int | None, highwater: int | None) -> None:
        self._position, self.lso, self.hw = position, lso, highwater

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return self.lso

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.hw

    async def position(self, tp: TopicPartition) -> int:
        return self._position


def restorer(read_committed: bool) -> Restorer:
    return Restorer(Settings(), Ownership({}), ["lead-state"], exactly_once=read_committed,
                    read_committed=read_committed, tuning=TxnTuning(worker_transactions=False),
                    bootstrap=["x:9092"], client={})


async def at_end(r: Restorer, position: int, lso: int | None, highwater: int | None) -> bool:
    return await r._at_end(EndsConsumer(position, lso, highwater),  # type: ignore[arg-type]
                           CHANGELOG)


async def test_read_committed_reads_to_the_last_stable_offset() -> None:
    r = restorer(read_committed=True)
    # an open transaction ends the readable part at the LSO, below the high watermark
    assert await at_end(r, 10, lso=10, highwater=12)
    assert not await at_end(r, 9, lso=10, highwater=12)
    # no LSO known yet (no fetch answered) or none reported: the high watermark
    assert not await at_end(r, 10, lso=-1, highwater=12)
    assert await at_end(r, 12, lso=None, highwater=12)


async def test_read_uncommitted_reads_to_the_high_watermark_and_waits_for_one() -> None:
    r = restorer(read_committed=False)
    assert not await at_end(r, 10, lso=10, highwater=12)
    assert await at_end(r, 12, lso=10, highwater=12)
    assert not await at_end(r, 0, lso=None, highwater=None)
    assert r.restored == {"lead-state": 0}


async def test_discard_closes_the_store_and_stops_the_producer() -> None:
    core = active_core()
    store, producer = MemoryStore(), FakeProducer()
    store.write([(b"k", b"v")], None)
    await discard(Pending(core.tasks[TASK], core.tasks[TASK].epoch, stage(), store,
                          producer))  # type: ignore[arg-type]
    assert producer.stopped and store.get(b"k") is None
    await discard(Pending(core.tasks[TASK], core.tasks[TASK].epoch, stage()))  # nothing yet
