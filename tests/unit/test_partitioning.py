"""Where a key belongs (murmur2, as Java's client) and where other partitioners put it."""

from __future__ import annotations

import zlib

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from router.records import Record
from router.service.partitioning import (
    candidate_partitions,
    crc32_partition,
    fnv1a_partition,
    forwards,
    murmur2,
    murmur2_partition,
    split_misplaced,
)

# Kafka's own UtilsTest.testMurmur2 vectors (signed Java ints)
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "java_hash"), JAVA_MURMUR2.items())
def test_murmur2_partition_is_javas_to_positive_murmur2(key: bytes, java_hash: int) -> None:
    for partitions in (1, 3, 12, 100):
        assert murmur2_partition(key, partitions) == (java_hash & 0x7FFFFFFF) % partitions


@given(st.binary(max_size=300))
def test_murmur2_is_aiokafkas_for_any_bytes(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


def test_crc32_partition_is_librdkafkas_consistent_random() -> None:
    assert zlib.crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value
    assert crc32_partition(b"123456789", 12) == 0xCBF43926 % 12


def test_fnv1a_partition_follows_sarama() -> None:
    # FNV-1a 32 of "foobar" is 0xbf9cf968: negative as an int32, so Sarama negates it
    signed = 0xBF9CF968 - (1 << 32)
    assert fnv1a_partition(b"foobar", 12) == abs(signed) % 12
    assert fnv1a_partition(b"a", 7) == abs(0xE40C292C - (1 << 32)) % 7


@given(st.binary(max_size=40), st.integers(min_value=1, max_value=64))
def test_candidates_are_every_partition_once_murmur2_first(key: bytes, partitions: int) -> None:
    order = candidate_partitions(key, partitions)
    assert order[0] == murmur2_partition(key, partitions)
    assert sorted(order) == list(range(partitions))


def rec(topic: str, partition: int, key: bytes | None, value: bytes | None = b"{}"
        ) -> Record:
    return Record(topic, partition, 0, key, value)


def test_split_misplaced_keeps_placed_unkeyed_and_unchecked_records_here() -> None:
    keys = [b"L-%d" % i for i in range(20)]
    right = [rec("t", murmur2_partition(k, 12), k) for k in keys]
    wrong = [rec("t", (murmur2_partition(k, 12) + 1) % 12, k) for k in keys[:5]]
    other_topic = rec("activity", (murmur2_partition(b"L-0", 12) + 1) % 12, b"L-0")
    unkeyed, empty = rec("t", 0, None), rec("t", wrong[0].partition, b"L-0", None)
    here, misplaced = split_misplaced([*right, *wrong, other_topic, unkeyed, empty], 12, {"t"})
    assert here == [*right, other_topic, unkeyed, empty]
    assert misplaced == [(r, murmur2_partition(r.key or b"", 12)) for r in wrong]


def test_forwards_go_to_the_repartition_topic_on_the_keys_partition() -> None:
    record = rec("t", 3, b"L-0", b'{"a": 1}')
    [out] = forwards([(record, 7)], {"t": "t-repartition"})
    assert (out.topic, out.key, out.value, out.partition) == (
        "t-repartition", b"L-0", b'{"a": 1}', 7)
