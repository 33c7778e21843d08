"""Which partition a key belongs on, and the records that arrived somewhere else.

The router keeps a lead's state on the partition Kafka's default partitioner (murmur2, as the
Java client, Kafka Connect, Kafka Streams and aiokafka use) picks for the lead_id key: every
input topic is co-partitioned that way. A producer with another partitioner (librdkafka's
default consistent_random hashes with CRC32, Sarama with FNV-1a) sends some of a lead's
records elsewhere, and a lead whose profile and touchpoints come from two such producers is
split across two partitions. The worker makes such records visible (a metric, one log line
per source, `lead show`) and, by default, forwards each misplaced touchpoint or profile to its
lead's partition through an internal repartition topic, as Kafka Streams does after a key
change: the forward is an output of the batch, so with exactly-once it is in the batch's
transaction (consumed once, forwarded once), and at-least-once it is written before the
input offset is committed (a repeat is dropped by event_id on arrival).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import lru_cache

from router.records import Output, Record

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


@lru_cache(maxsize=64)
def _words(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}I")


def murmur2(data: bytes) -> int:
    """Java's Utils.murmur2 (unsigned), as aiokafka's, reading four bytes at a time in one
    unpack: aiokafka's loop over single bytes was ~5 % of a worker under load (every keyed
    input is checked against its partition)."""
    length = len(data)
    words = length >> 2
    h = 0x9747B28C ^ length
    for k in _words(words).unpack_from(data):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = words << 2
    extra = length & 3
    if extra == 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra:
        h = ((h ^ data[tail]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


@lru_cache(maxsize=16_384)  # a batch repeats keys (a lead's touchpoints)
def _murmur2(key: bytes) -> int:
    return murmur2(key) & 0x7FFFFFFF


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


def split_misplaced(records: Sequence[Record], partitions: int, checked: Collection[str]
                    ) -> tuple[list[Record], list[tuple[Record, int]]]:
    """One pass over a partition's batch: the records to process here, and the misplaced
    ones (on a `checked` topic, keyed for another partition) with the partition their key
    belongs on. Unkeyed or empty records stay: the qualifier dead-letters them here, where
    they arrived."""
    here: list[Record] = []
    misplaced: list[tuple[Record, int]] = []
    for r in records:
        if r.topic in checked and r.key is not None and r.value is not None:
            expected = murmur2_partition(r.key, partitions)
            if expected != r.partition:
                misplaced.append((r, expected))
                continue
        here.append(r)
    return here, misplaced


def forwards(misplaced: Iterable[tuple[Record, int]], forward_to: Mapping[str, str]
             ) -> list[Output]:
    """Each misplaced record as an output to its lead's partition of its repartition topic."""
    return [Output(forward_to[r.topic], r.key, r.value or b"", partition=expected)
            for r, expected in misplaced]
