"""Guard against faust partitions that silently stop being fetched after a rebalance.

Seen in our chaos runs (faust-streaming 0.15.3, reported upstream as #166 and #629): after a
worker joins or leaves, a partition assigned to a worker can drop out of faust's set of
"active" partitions (the ones it fetches) without being paused, so its lag grows for ever with
no error. Every few seconds this guard compares the worker's assigned input partitions with
faust's active and paused sets; a partition missing from both for three checks in a row (so
not a momentarily full stream buffer) is put back and a warning is logged. Faust internals are
touched here and only here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from router.metrics import PARTITIONS_UNSTALLED

log = logging.getLogger(__name__)

CHECKS_BEFORE_ACTING = 3


class StallGuard:
    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        self.suspects: dict[Any, int] = {}
        self.unstalled = 0

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
