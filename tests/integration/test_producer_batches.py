"""The worker's producers against a real broker: megabyte record batches, and the warning a
user gets when a topic's max.message.bytes is smaller than the batches (commit.py)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from router.settings import Settings
from router.tools.history import read_topic
from router.worker.pipeline.commit import (
    failure_hint,
    make_producer,
    send_changelog,
    stop_producer,
)
from router.worker.pipeline.txn_tuning import TxnTuning
from tests.integration.conftest import create_topic

RECORDS = 400
VALUE = b"x" * 1000  # 400 KB in all: one batch with the default, 7 with 64 KiB ones
TOPIC_LIMIT = 65_536


async def _transaction(broker: Any, topic: str, batch_bytes: int) -> int:
    """The records in one transaction, as a worker's commit sends a changelog: its batches."""
    settings = Settings(broker=broker.url, producer_batch_bytes=batch_bytes)
    producer = make_producer(settings, TxnTuning(), f"{topic}-{batch_bytes}")
    await producer.start()
    try:
        await producer.begin_transaction()
        sent = await send_changelog(producer, topic, 0,
                                    [(f"L-{i}".encode(), VALUE) for i in range(RECORDS)])
        for _count, future in sent:
            await future
        await producer.commit_transaction()
        return len(sent)
    finally:
        await stop_producer(producer)


async def test_a_batch_above_the_topic_limit_fails_with_a_hint_and_a_smaller_one_commits(
        broker: Any) -> None:
    topic = await create_topic(broker, "changelog",
                               configs={"max.message.bytes": str(TOPIC_LIMIT)})
    with pytest.raises(MessageSizeTooLargeError) as refused:  # one 400 KB batch
        await _transaction(broker, topic, Settings().producer_batch_bytes)
    assert "LEADROUTER_PRODUCER_BATCH_BYTES" in failure_hint(refused.value)["hint"]
    assert failure_hint(RuntimeError("other")) == {}

    assert await _transaction(broker, topic, TOPIC_LIMIT // 2) >= RECORDS * len(VALUE) // (
        TOPIC_LIMIT // 2)
    records = await read_topic([broker.bootstrap], topic, timeout=20.0,
                               isolation_level="read_committed")
    assert [r.key for r in records] == [f"L-{i}".encode() for i in range(RECORDS)]
