"""Guard against faust partitions that silently stop being fetched after a rebalance.

Seen in our chaos runs (faust-streaming 0.15.3, reported upstream as #166 and #629): after a
worker joins or leaves, a partition assigned to a worker can drop out of faust's set of
"active" partitions (the ones it fetches) without being paused, so its lag grows for ever with
no error. Every few seconds this guard compares the worker's assigned input partitions with
faust's active and paused sets; a partition missing from both for three checks in a row (so
not a momentarily full stream buffer) is put back and a warning is logged.

A second check watches commits: faust commits a partition only up to its first un-acked
record, so a record that was fetched but never reached the stream (see faust_fixes.py for the
way we know of, now fixed) stops the partition's commits for good while later records are
processed. If the oldest acked offset stays beyond the committed one for three checks, the
partition is sought back to its committed offset; the records behind it are fetched again
(a repeat is harmless: outputs carry deterministic ids) and an error is logged, because it
means a path we do not know of yet.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from router.metrics import COMMIT_STALLS_REPAIRED, PARTITIONS_UNSTALLED

log = logging.getLogger(__name__)

CHECKS_BEFORE_ACTING = 3


class StallGuard:
    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        self.suspects: dict[Any, int] = {}
        self.unstalled = 0
        self.commit_suspects: dict[Any, tuple[int, int]] = {}
        self.commit_stalls_repaired = 0

    def missing(self, consumer: Any) -> set[Any]:
        assigned = {tp for tp in consumer.assignment() if tp.topic in self.topics}
        active = consumer._active_partitions or set()
        missing: set[Any] = assigned - active - consumer._paused_partitions
        return missing

    def check(self, app: Any) -> set[Any]:
        """One check; returns the partitions put back into fetching."""
        if app.rebalancing or app.in_recovery:
            self.suspects.clear()
            return set()
        consumer = app.consumer
        missing = self.missing(consumer)
        self.suspects = {tp: self.suspects.get(tp, 0) + 1 for tp in missing}
        stuck = {tp for tp, n in self.suspects.items() if n >= CHECKS_BEFORE_ACTING}
        if stuck:
            log.warning(
                "partitions were assigned but not fetched; fetching them again",
                extra={"partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in stuck)},
            )
            consumer._buffered_partitions.difference_update(stuck)
            consumer._get_active_partitions().update(stuck)
            for tp in stuck:
                self.suspects.pop(tp, None)
            self.unstalled += len(stuck)
            PARTITIONS_UNSTALLED.inc(len(stuck))
        return stuck

    def stalled_commits(self, consumer: Any) -> dict[Any, int]:
        """Partitions whose next record is unacked while later ones are: {tp: committed}."""
        stalled: dict[Any, int] = {}
        for tp in consumer.assignment():
            if tp.topic not in self.topics:
                continue
            committed = consumer._committed_offset.get(tp)
            acked = consumer._acked.get(tp)
            # committed is the next offset to process; anything acked beyond it while it is
            # not means a record was skipped (see faust_fixes.py, fixes 3 and 4)
            if committed is not None and acked and min(acked) > committed:
                stalled[tp] = committed
        return stalled

    async def check_commits(self, app: Any) -> set[Any]:
        """One commit check; returns the partitions sought back to their committed offset."""
        if app.rebalancing or app.in_recovery:
            self.commit_suspects.clear()
            return set()
        consumer = app.consumer
        stalled = self.stalled_commits(consumer)
        self.commit_suspects = {
            tp: (committed, self.commit_suspects.get(tp, (committed, 0))[1] + 1)
            for tp, committed in stalled.items()
            if self.commit_suspects.get(tp, (committed, 0))[0] == committed
        }
        repaired: set[Any] = set()
        for tp, (committed, seen) in list(self.commit_suspects.items()):
            if seen < CHECKS_BEFORE_ACTING:
                continue
            log.error(
                "partition stopped committing behind unprocessed records; fetching them again",
                extra={"partition": f"{tp.topic}[{tp.partition}]", "committed": committed,
                       "oldest_acked": min(consumer._acked.get(tp) or [committed]),
                       "read_offset": consumer._read_offset.get(tp)},
            )
            consumer._acked.pop(tp, None)
            consumer._acked_index.pop(tp, None)
            consumer._gap.pop(tp, None)
            await consumer.seek(tp, committed)
            self.commit_suspects.pop(tp, None)
            repaired.add(tp)
        if repaired:
            self.commit_stalls_repaired += len(repaired)
            COMMIT_STALLS_REPAIRED.inc(len(repaired))
        return repaired
