"""What both commit protocols share (eos_commit.py: exactly-once, alo_commit.py:
at-least-once): the producers, the changelog sends, closing a producer, and what a commit
asks of the processor when its batch is not committed (TaskControl: processor.py does the
task side)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from router.settings import Settings, bootstrap_servers
from router.worker.pipeline.core import Task, TaskId
from router.worker.pipeline.txn_tuning import TxnTuning

CLOSE_TIMEOUT_SECONDS = 5.0
# a transaction left open by a crashed worker holds back every read_committed reader of the
# partitions it wrote until the new owner fences it or this timeout aborts it
TRANSACTION_TIMEOUT_MS = 10_000


def make_producer(settings: Settings, tuning: TxnTuning,
                  transactional_id: str | None = None) -> AIOKafkaProducer:
    """A producer of the worker's commits (transactional with an id).

    Record batches of up to `producer_batch_bytes` (1 MB) instead of aiokafka's 16 KiB:
    aiokafka keeps one produce request in flight per broker and puts at most one batch per
    partition in it, so a transaction of 9,000 states (~6 MB) waited for ~300 produce round
    trips one after the other, and the broker spent half a core on the small batches
    (README "Measured", "Record batches of a megabyte")."""
    kwargs: dict[str, Any] = {}
    if transactional_id is not None:
        kwargs = {"transactional_id": transactional_id,
                  "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS,
                  "retry_backoff_ms": tuning.retry_backoff_ms}
    return AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.broker), acks="all",
                            linger_ms=1, max_batch_size=settings.producer_batch_bytes,
                            **kwargs, **settings.kafka_client_kwargs())


class TaskControl(Protocol):
    """The processor's side of a batch that was not committed."""

    def seek(self, task: Task) -> None:
        """Resume the task's inputs from its positions (the batches since are fetched again)."""

    def rewind(self, task_id: TaskId, epoch: int, reason: str, exc: BaseException) -> None:
        """Nothing of the batch was written: process it again from the task's positions."""

    async def abandon(self, task_id: TaskId, epoch: int, reason: str, exc: BaseException,
                      wait_for_rebalance: bool = False) -> None:
        """The batch's outcome is unknown or the task is someone else's: drop its state."""


def failure_hint(exc: BaseException) -> dict[str, str]:
    """What a user can do about a batch that failed this way (for the warning's fields)."""
    if isinstance(exc, MessageSizeTooLargeError):
        return {"hint": "a record batch was larger than a topic's max.message.bytes: lower"
                        " LEADROUTER_PRODUCER_BATCH_BYTES (or raise the topic's limit);"
                        " the batch is retried until then"}
    return {}


async def send_changelog(producer: AIOKafkaProducer, topic: str, partition: int,
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


async def record_offsets(sent: list[tuple[int, asyncio.Future[Any]]], ends: list[int]
                         ) -> list[int | None]:
    """The changelog offset of the record before each of `ends` (counts from the first record
    sent): the last record of each of several batches' writes sent as one (None for none)."""
    batches: list[tuple[int, int, int]] = []  # (first record's index, records, base offset)
    first = 0
    for count, future in sent:
        metadata = await future
        batches.append((first, count, metadata.offset))
        first += count
    offsets: list[int | None] = []
    j = 0
    for end in ends:
        if end <= 0:
            offsets.append(None)
            continue
        while end > batches[j][0] + batches[j][1]:
            j += 1
        start, _count, base = batches[j]
        offsets.append(base + end - 1 - start)
    return offsets


async def last_offset(sent: list[tuple[int, asyncio.Future[Any]]]) -> int | None:
    """The changelog offset of the last record sent (what RocksDB persists as applied)."""
    return (await record_offsets(sent, [sum(count for count, _future in sent)]))[0]


async def stop_producer(producer: AIOKafkaProducer) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), CLOSE_TIMEOUT_SECONDS)
