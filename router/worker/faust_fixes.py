"""Fixes for two faust-streaming 0.15.3 consumer behaviours; faust internals are touched here
and in stall_guard.py only, so an upgrade has two files to re-check.

1. Fetch wait. Faust hard-codes fetch_max_wait_ms=1500; every hop then costs up to 1.5 s on
   brokers that hold a fetch for its whole wait (Tansu). A short wait only costs idle polls on
   Kafka.

2. Stale read offsets after a rebalance (found by `make chaos`: a partition whose committed
   offset stopped for good while records behind it were never processed). Faust's fetch loop
   does, per record:

       await wait_first(callback(message), suspend_flow.wait())   # hand it to the stream
       read_offset[tp] = message.offset                          # "delivered up to here"

   When the stream's buffer is full the first line blocks; if a rebalance happens meanwhile,
   the new assignment seeks the partition back to its committed offset C and sets
   read_offset[tp] = C, and then the blocked line returns and the second line overwrites it
   with the old record's offset X > C. Re-fetched records C..X-1 are now "behind the read
   offset" and dropped silently, never acked, so faust never commits past C again: the
   partition stalls and those records are lost (faust already skips the stale record X itself
   at the stream, by its generation id). The fix: a read offset written for a record fetched
   in an older consumer generation is ignored; the seek's offset stands.

3. Offset gaps filled as if they were processed. When the fetch loop sees a record further on
   than the next expected offset it records a "gap" and later commits over it, as if the
   records in between had been processed. On Kafka that is right for transaction markers and
   compacted topics; but a consumer whose position jumped (seen in `make chaos` right after a
   worker restart: every partition resumed ~11 records past its committed offset, and those
   records were never processed) loses records silently the same way. For our input topics,
   which are neither compacted nor (by default) written transactionally, a gap is refused:
   the commit then stops at the first missing record and the stall guard seeks back to it,
   so the records are processed late instead of never. `LEADROUTER_INPUT_GAPS=accept`
   restores faust's behaviour for inputs produced with transactions.

4. One missing record committed over. Faust refuses to commit when the oldest acked offset
   is more than one past the committed offset ("min(acked) - committed > 1"), but the committed
   offset is already the *next* record to process, so exactly one missing record slips
   through. Records go missing like that when a stream drops a message while flow control is
   still paused right after a rebalance (seen in `make chaos`: profiles[6]@133 was never
   processed and its lead never became MQL). For the same gapless topics the check is strict:
   no commit while the next record is not acked; the stall guard then fetches it again.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from router.metrics import INPUT_GAPS_REFUSED, STALE_READ_OFFSETS_IGNORED


def lower_fetch_wait(fetch_max_wait_ms: int) -> None:
    thread_cls: Any = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(thread_cls, "_leadrouter_original_create", None)
    if original is None:
        original = thread_cls._create_worker_consumer
        thread_cls._leadrouter_original_create = original

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        return consumer

    thread_cls._create_worker_consumer = _create_worker_consumer


class GenerationCheckedReadOffsets(defaultdict[Any, int | None]):
    """faust's `_read_offset` map, refusing writes for records of an older generation."""

    def __init__(self, consumer: Any, initial: dict[Any, int | None]) -> None:
        super().__init__(lambda: None, initial)
        self.consumer = consumer
        self.ignored = 0

    def __setitem__(self, tp: Any, offset: int | None) -> None:
        message = self.consumer._leadrouter_delivering
        if (
            message is not None
            and message.tp == tp
            and message.offset == offset
            and message.generation_id is not None
            and message.generation_id != self.consumer.app.consumer_generation_id
        ):
            self.ignored += 1
            STALE_READ_OFFSETS_IGNORED.inc()
            return
        super().__setitem__(tp, offset)


def check_read_offset_generation() -> None:
    """Install fix 2 on every faust consumer created from now on (idempotent)."""
    cls: Any = faust_consumer.Consumer
    if getattr(cls, "_leadrouter_generation_checked", False):
        return
    original_init = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._leadrouter_delivering = None
        self._read_offset = GenerationCheckedReadOffsets(self, dict(self._read_offset))
        deliver = self.callback

        def remember_and_deliver(message: Any) -> Any:
            # synchronous on purpose: recorded before wait_first can give up on the delivery
            self._leadrouter_delivering = message
            return deliver(message)

        self.callback = remember_and_deliver

    cls.__init__ = __init__
    cls._leadrouter_generation_checked = True


def trace_commits(log: Any) -> None:
    """LEADROUTER_TRACE=1: log every offset commit faust attempts and whether it took."""
    cls: Any = faust_consumer.Consumer
    if getattr(cls, "_leadrouter_commits_traced", False):
        return
    original = cls._commit_offsets

    async def _commit_offsets(self: Any, offsets: Any, *args: Any, **kwargs: Any) -> bool:
        done: bool = await original(self, offsets, *args, **kwargs)
        log.debug("commit", extra={
            "generation": self.app.consumer_generation_id, "ok": done,
            "offsets": {f"{tp.topic}[{tp.partition}]": o for tp, o in sorted(offsets.items())}})
        return done

    cls._commit_offsets = _commit_offsets
    driver_cls: Any = faust_aiokafka.Consumer  # overrides seek_to_committed
    original_seek = driver_cls.seek_to_committed

    async def seek_to_committed(self: Any) -> Any:
        committed = await original_seek(self)
        log.debug("seek to committed", extra={
            "generation": self.app.consumer_generation_id,
            "offsets": {f"{tp.topic}[{tp.partition}]": o for tp, o in sorted(committed.items())}})
        return committed

    driver_cls.seek_to_committed = seek_to_committed
    cls._leadrouter_commits_traced = True


def refuse_input_gaps(topics: frozenset[str], log: Any) -> None:
    """Install fix 3 for `topics` (idempotent; the last call's topics win)."""
    cls: Any = faust_consumer.Consumer
    cls._leadrouter_gapless_topics = topics
    if getattr(cls, "_leadrouter_gaps_checked", False):
        return
    original = cls._add_gap

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        if tp.topic in cls._leadrouter_gapless_topics:
            INPUT_GAPS_REFUSED.inc()
            log.warning("fetch skipped records of an input partition; not committing over them",
                        extra={"partition": f"{tp.topic}[{tp.partition}]",
                               "expected": offset_from, "got": offset_to,
                               "committed": self._committed_offset.get(tp)})
            return
        await original(self, tp, offset_from, offset_to)

    cls._add_gap = _add_gap
    original_new_offset = cls._new_offset

    def _new_offset(self: Any, tp: Any) -> int | None:
        if tp.topic in cls._leadrouter_gapless_topics:
            acked = self._acked.get(tp)
            committed = self._committed_offset.get(tp)
            if acked and committed is not None and min(acked) > committed:
                return None  # the next record to process is not done: commit nothing yet
        result: int | None = original_new_offset(self, tp)
        return result

    cls._new_offset = _new_offset
    cls._leadrouter_gaps_checked = True
