"""What both commit protocols share (eos_commit.py: exactly-once, alo_commit.py:
at-least-once): the changelog sends, closing a producer, and what a commit asks of the
processor when its batch is not committed (TaskControl: processor.py does the task side)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer

from router.worker.pipeline.core import Task, TaskId

CLOSE_TIMEOUT_SECONDS = 5.0


class TaskControl(Protocol):
    """The processor's side of a batch that was not committed."""

    def seek(self, task: Task) -> None:
        """Resume the task's inputs from its positions (the batches since are fetched again)."""

    def rewind(self, task_id: TaskId, epoch: int, reason: str, exc: BaseException) -> None:
        """Nothing of the batch was written: process it again from the task's positions."""

    async def abandon(self, task_id: TaskId, epoch: int, reason: str, exc: BaseException,
                      wait_for_rebalance: bool = False) -> None:
        """The batch's outcome is unknown or the task is someone else's: drop its state."""


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


async def last_offset(sent: list[tuple[int, asyncio.Future[Any]]]) -> int | None:
    """The changelog offset of the last record sent (what RocksDB persists as applied)."""
    last = None
    for count, future in sent:
        metadata = await future
        last = metadata.offset + count - 1
    return last


async def stop_producer(producer: AIOKafkaProducer) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), CLOSE_TIMEOUT_SECONDS)
