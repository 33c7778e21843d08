"""The leads handler: one lead partition's batch of raw input records in, outputs and state
writes out.

Inputs, co-partitioned by lead (one task per partition consumes all of them):
  leads.touchpoints, leads.profiles, the recycle topic and the two repartition topics
      -> router.service.qualifier (the lead's state in the "lead-state" store)
  sales.activity
      -> validated onto the routing stream (forward_activity), or dead-lettered

A touchpoint or profile keyed for another partition (a producer with another partitioner,
service/partitioning.py) is counted (leadrouter_misplaced_records_total), warned about once
per topic with an example key, and by default (misplaced_records = "repartition") forwarded
to its lead's partition through the repartition topics instead of being applied here.

No Kafka here: the partition processor (router/worker/pipeline) hands us records and writes
what we return, so this layer is tested with plain lists (tests/unit/test_leads_stage.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime

import orjson

from router.adapters.topics import Topics
from router.adapters.wire import (
    DEAD_LETTER_VALUE_LIMIT,
    Refused,
    dead_letter,
    dead_letter_key,
    decode,
    encode,
)
from router.domain.events import SalesActivity
from router.domain.qualification import event_time_problem
from router.domain.rules import Rules
from router.metrics import DEAD_LETTERS, MISPLACED_RECORDS
from router.records import Output, Record, StageResult
from router.service.partitioning import forwards, split_misplaced
from router.service.qualifier import Qualifier

# the logger this warning was always written under (it lived in the worker's app module):
# the same log lines as before for anyone filtering on the logger name
log = logging.getLogger("router.worker.app")


def forward_activity(record: Record, rules: Rules, topics: Topics, now: datetime,
                     router_version: str) -> Output:
    """sales.activity -> the routing stream (valid) or the dead-letter topic (invalid)."""
    try:
        activity = decode(SalesActivity, record.key, record.value, rules)
        problem = event_time_problem(activity.occurred_at, now, rules)
        if problem:
            raise Refused("future_event", f"field 'occurred_at': {problem}")
    except Refused as refused:
        DEAD_LETTERS.labels(record.topic, refused.reason).inc()
        letter = dead_letter(refused, topic=record.topic, partition=record.partition,
                             offset=record.offset, key=record.key, value=record.value,
                             received_at=now, router_version=router_version)
        return Output(topics.deadletter, dead_letter_key(record.key), encode(letter))
    # Only what a not_holder dead letter can keep (dead_letter() cuts the value to
    # DEAD_LETTER_VALUE_LIMIT bytes and marks it truncated): the whole value of a 1 MiB input,
    # escaped once more, would make a routing record over the producer's request-size limit.
    kept = record.value[: DEAD_LETTER_VALUE_LIMIT + 4] if record.value else None
    source = {"topic": record.topic, "partition": record.partition, "offset": record.offset,
              "value": kept.decode("utf-8", "ignore") if kept else None}
    value = orjson.dumps({"kind": "activity", "activity": activity.model_dump(mode="json"),
                          "source": source})
    return Output(topics.routing, record.key, value)


class LeadsStage:
    """The leads stage's decisions for one batch of one lead partition."""

    def __init__(self, rules: Rules, topics: Topics, router_version: str, qualifier: Qualifier,
                 *, partitions: int, repartition: bool) -> None:
        self.rules = rules
        self.topics = topics
        self.router_version = router_version
        self.qualifier = qualifier
        self.partitions = partitions
        self.repartition = repartition  # settings.misplaced_records == "repartition"
        self.misplaced_logged: set[str] = set()  # topics already warned about

    def process(self, records: Sequence[Record], now: datetime,
                load_state: Callable[[bytes], bytes | None]) -> StageResult:
        activity = self.topics.activity
        forward_to = self.topics.repartitioned  # sales activity goes to the one routing partition
        placed, misplaced = split_misplaced(records, self.partitions, forward_to)
        forwarded: list[Output] = []
        if misplaced:
            self._report_misplaced(misplaced)
            if self.repartition:
                records, forwarded = placed, forwards(misplaced, forward_to)
        leads = [r for r in records if r.topic != activity]
        result = StageResult(outputs=forwarded)
        if leads:
            decided = self.qualifier.process(leads, now, load_state)
            result.outputs += decided.outputs
            result.writes = decided.writes
        if len(leads) != len(records):
            result.outputs += [
                forward_activity(r, self.rules, self.topics, now, self.router_version)
                for r in records if r.topic == activity]
        return result

    def _report_misplaced(self, misplaced: list[tuple[Record, int]]) -> None:
        """Never silent about a producer with another partitioner (service/partitioning.py):
        a metric per topic, and one warning per topic with an example key."""
        for topic, count in Counter(r.topic for r, _p in misplaced).items():
            MISPLACED_RECORDS.labels(topic).inc(count)
        for r, expected in misplaced:
            if r.topic in self.misplaced_logged:
                continue
            self.misplaced_logged.add(r.topic)
            log.warning("records keyed for another partition: their producer does not use"
                        " Kafka's default (murmur2) partitioner, so a lead whose records come"
                        " from several producers is split across partitions (README,"
                        " Producers)", extra={
                            "topic": r.topic, "example_key": (r.key or b"").decode(
                                errors="replace"),
                            "arrived_on": r.partition, "murmur2_partition": expected,
                            "partitions": self.partitions})
