"""Which partition a key belongs on, and the records that arrived somewhere else.

The router keeps a lead's state on the partition Kafka's default partitioner (murmur2, as the
Java client, Kafka Connect, Kafka Streams and aiokafka use) picks for the lead_id key: every
input topic is co-partitioned that way. A producer with another partitioner (librdkafka's
default consistent_random hashes with CRC32, Sarama with FNV-1a) sends some of a lead's
records elsewhere, and a lead whose profile and touchpoints come from two such producers is
split across two partitions. Nothing here changes where a record is processed; it makes such
records visible (a metric, one log line per source, `lead show`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=65_536)  # keys repeat (a lead's touchpoints); murmur2 is pure Python
def _murmur2(key: bytes) -> int:
    return int(murmur2(key) & 0x7FFFFFFF)


def murmur2_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner for a keyed record (Java's Utils.toPositive(murmur2))."""
    return _murmur2(key) % partitions


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's default for a keyed record (consistent_random: CRC32 of the key)."""
    return zlib.crc32(key) % partitions


def fnv1a_partition(key: bytes, partitions: int) -> int:
    """Sarama's (Go) default hash partitioner: FNV-1a 32, as a signed int, made positive."""
    h = 0x811C9DC5
    for byte in key:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    signed = h - (1 << 32) if h >= 1 << 31 else h
    return abs(signed) % partitions  # Go's % keeps the sign; Sarama then negates


def candidate_partitions(key: bytes, partitions: int) -> list[int]:
    """Where a key's records may be, most likely first: murmur2, the other common
    partitioners, then every other partition (a custom partitioner, or none)."""
    order = [murmur2_partition(key, partitions), crc32_partition(key, partitions),
             fnv1a_partition(key, partitions), *range(partitions)]
    return list(dict.fromkeys(order))


class Keyed(Protocol):
    """What the detector reads of a record (router.service.qualifier.Record has it)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...


@dataclass
class MisplacedKeys:
    """Counts, per source topic, records whose key does not hash (murmur2) to the partition
    they arrived on; remembers one example key per topic for the log line and the metric."""

    partitions: int
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, tuple[bytes, int, int]] = field(default_factory=dict)

    def check(self, records: Iterable[Keyed]) -> list[str]:
        """The topics seen misplaced for the first time in these records."""
        first: list[str] = []
        for r in records:
            if r.key is None:
                continue
            expected = murmur2_partition(r.key, self.partitions)
            if expected == r.partition:
                continue
            if r.topic not in self.counts:
                self.counts[r.topic] = 0
                self.examples[r.topic] = (r.key, r.partition, expected)
                first.append(r.topic)
            self.counts[r.topic] += 1
        return first
