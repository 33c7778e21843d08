"""Which MQLs decay next: an in-memory deadline index, so a clock tick does not decode every
lead state of a partition (100k of them) to find the few that are due.

The index is a hint, never the truth. A due entry only makes the worker send itself a decay
record; the qualifier re-checks that record against the stored state (router.domain.decay),
so a stale entry costs one no-op record, never a wrong event. What the index must not do is
miss a lead, so it is refilled from the stored states whenever this worker gains partitions,
and every state the qualifier writes updates it.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection


class DecayIndex:
    """Lead key -> (deadline, partition, cycle), with a heap ordered by deadline.

    Heap entries are not removed when a lead's deadline moves (that would cost O(n)): the
    stale ones are skipped when they surface, and the heap is rebuilt when they outnumber the
    live ones, so memory stays proportional to the MQLs held.
    """

    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[float, int, int]] = {}
        self._heap: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> tuple[float, int, int] | None:
        return self._entries.get(key)

    def set(self, key: bytes, partition: int, deadline: float | None, cycle: int) -> None:
        """The lead's current deadline (None: it cannot decay, e.g. not an MQL)."""
        if deadline is None:
            self._entries.pop(key, None)
            return
        entry = (deadline, partition, cycle)
        if self._entries.get(key) == entry:
            return
        self._entries[key] = entry
        heapq.heappush(self._heap, (deadline, key))
        if len(self._heap) > 2 * len(self._entries) + 1024:
            self._heap = [(d, k) for k, (d, _p, _c) in self._entries.items()]
            heapq.heapify(self._heap)

    def seed(self, key: bytes, partition: int, deadline: float | None, cycle: int) -> None:
        """Like `set`, from a scan of the stored states: an entry the qualifier set meanwhile
        is newer than what the scan read, so it wins."""
        if key not in self._entries:
            self.set(key, partition, deadline, cycle)

    def keep_partitions(self, partitions: Collection[int]) -> None:
        """Forget the leads of partitions this worker no longer owns."""
        for key in [k for k, (_d, p, _c) in self._entries.items() if p not in partitions]:
            del self._entries[key]

    def take_due(self, now: float, partitions: Collection[int], limit: int,
                 retry_after: float) -> list[tuple[bytes, int, int]]:
        """(key, partition, cycle) of up to `limit` leads due at `now` in `partitions`.

        A taken lead stays indexed, `retry_after` seconds later: if its decay record is lost
        or not applied yet, it is asked again; once applied, the qualifier's state write
        replaces or removes the entry.
        """
        out: list[tuple[bytes, int, int]] = []
        retry: list[tuple[bytes, int, int]] = []
        heap = self._heap
        while heap and heap[0][0] <= now and len(out) < limit:
            deadline, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is None or entry[0] != deadline:
                continue  # stale: the lead moved on
            _d, partition, cycle = entry
            if partition not in partitions:
                del self._entries[key]
                continue
            out.append((key, partition, cycle))
            retry.append((key, partition, cycle))
        for key, partition, cycle in retry:
            self.set(key, partition, now + retry_after, cycle)
        return out
