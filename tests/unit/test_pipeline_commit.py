"""commit.py's offsets of records sent as record batches: where each batch of writes ended."""

from __future__ import annotations

import asyncio
from typing import Any

from router.worker.pipeline.commit import last_offset, record_offsets
from tests.unit.pipeline_fakes import Meta


def _sent(*batches: tuple[int, int]) -> list[tuple[int, asyncio.Future[Any]]]:
    """(records, base offset) per record batch, each already acknowledged."""
    sent: list[tuple[int, asyncio.Future[Any]]] = []
    for count, base in batches:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(Meta(base))
        sent.append((count, future))
    return sent


async def test_each_end_is_the_offset_of_the_record_before_it_across_batches() -> None:
    # records 0-2 in a batch at 10, 3-4 in one at 50 (another writer's records between)
    sent = _sent((3, 10), (2, 50))
    assert await record_offsets(sent, [1, 3, 4, 5]) == [10, 12, 50, 51]
    assert await record_offsets(sent, [0, 3, 3]) == [None, 12, 12]
    assert await last_offset(sent) == 51
