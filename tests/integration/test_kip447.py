"""kip447.py on the real broker: a transaction's offsets sent with the member's current
GroupMetadata commit, a zombie's (older generation, unknown member, a generation a rebalance
moved on from, a static member's instance id with another member id) are refused as
StaleGeneration and leave nothing behind once aborted, and
committed_stable waits for a transaction still holding offsets. A plain str group id keeps
aiokafka's unfenced v0 commit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from router.harness.brokers import LocalBroker
from router.worker.pipeline import kip447

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@dataclass
class Setup:
    bootstrap: str
    group: str
    source: str  # the group's input: the offsets committed are of its partitions
    out: str  # what the transactions write
    member: AIOKafkaConsumer
    producer: AIOKafkaProducer

    @property
    def tp0(self) -> TopicPartition:
        return TopicPartition(self.source, 0)


async def joined(bootstrap: str, group: str, topic: str, instance: str | None = None
                 ) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, heartbeat_interval_ms=100,
                                auto_offset_reset="earliest", group_instance_id=instance)
    await consumer.start()
    for _ in range(200):
        if consumer.assignment():
            return consumer
        await consumer.getmany(timeout_ms=50)
    raise AssertionError("the consumer never joined its group")


@pytest.fixture
async def setup(broker: LocalBroker) -> AsyncIterator[Setup]:
    if broker.kind != "kafka":
        pytest.skip("transactions need Apache Kafka (Tansu has none)")
    kip447.install()
    name = uuid.uuid4().hex[:8]
    source, out = f"kip447.{name}.in", f"kip447.{name}.out"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(source, 2, 1), NewTopic(out, 1, 1)])
    finally:
        await admin.close()
    group = f"kip447-{name}"
    member = await joined(broker.bootstrap, group, source)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap,
                                transactional_id=f"kip447-{name}")
    await producer.start()
    try:
        yield Setup(broker.bootstrap, group, source, out, member, producer)
    finally:
        await producer.stop()
        await member.stop()


async def read_committed(bootstrap: str, topic: str) -> list[bytes]:
    """Every record a read_committed reader sees in the topic's one partition, up to its end."""
    tp = TopicPartition(topic, 0)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                              enable_auto_commit=False)
    await reader.start()
    try:
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        end = (await reader.end_offsets([tp]))[tp]
        values: list[bytes] = []
        while await reader.position(tp) < end:
            for records in (await reader.getmany(tp, timeout_ms=200)).values():
                values.extend(r.value for r in records)
        return values
    finally:
        await reader.stop()


async def test_current_generation_commits(setup: Setup) -> None:
    s = setup
    meta = kip447.group_metadata(s.member, s.group)
    assert meta == s.group and meta.generation_id >= 1 and meta.member_id
    await s.producer.begin_transaction()
    await s.producer.send_and_wait(s.out, b"good")
    await s.producer.send_offsets_to_transaction({s.tp0: 5}, meta)
    await s.producer.commit_transaction()
    tp1 = TopicPartition(s.source, 1)
    assert await kip447.committed_stable(s.member, [s.tp0, tp1]) == {s.tp0: 5, tp1: None}
    assert await read_committed(s.bootstrap, s.out) == [b"good"]


async def stale_metadata(s: Setup, how: str
                         ) -> tuple[kip447.GroupMetadata, AIOKafkaConsumer | None]:
    """A zombie's GroupMetadata, and the second member that made it one (to stop after)."""
    meta = kip447.group_metadata(s.member, s.group)
    if how == "older generation":
        return kip447.GroupMetadata(s.group, generation_id=meta.generation_id - 1,
                                    member_id=meta.member_id), None
    if how == "unknown member":
        return kip447.GroupMetadata(s.group, generation_id=meta.generation_id,
                                    member_id=f"zombie-{uuid.uuid4()}"), None
    # a second member joins: the group rebalances and the first member's generation moves on
    instance = f"static-{uuid.uuid4().hex[:6]}" if how == "fenced instance" else None
    second = await joined(s.bootstrap, s.group, s.source, instance)
    for _ in range(200):
        if s.member._coordinator.generation > meta.generation_id and s.member.assignment():
            break
        await s.member.getmany(timeout_ms=50)
    assert kip447.group_metadata(s.member, s.group).generation_id > meta.generation_id
    if instance is not None:  # the static member's instance id, with another member id
        static = kip447.group_metadata(second, s.group)
        assert static.group_instance_id == instance
        meta = kip447.GroupMetadata(s.group, generation_id=static.generation_id,
                                    member_id=f"zombie-{uuid.uuid4()}",
                                    group_instance_id=instance)
    return meta, second


@pytest.mark.parametrize(("how", "error"), [("older generation", "ILLEGAL_GENERATION"),
                                            ("unknown member", "UNKNOWN_MEMBER_ID"),
                                            ("after a rebalance", "ILLEGAL_GENERATION"),
                                            ("fenced instance", "FENCED_INSTANCE_ID")])
async def test_a_zombie_is_refused_and_leaves_nothing(setup: Setup, how: str, error: str
                                                      ) -> None:
    s = setup
    stale, second = await stale_metadata(s, how)
    try:
        await s.producer.begin_transaction()
        await s.producer.send_and_wait(s.out, b"zombie")
        with pytest.raises(kip447.StaleGeneration) as refused:
            await s.producer.send_offsets_to_transaction({s.tp0: 7}, stale)
        assert refused.value.reason == error
        await s.producer.abort_transaction()
        assert await kip447.committed_stable(s.member, [s.tp0]) == {s.tp0: None}
        # the same producer runs a good transaction next
        await s.producer.begin_transaction()
        await s.producer.send_and_wait(s.out, b"good")
        await s.producer.send_offsets_to_transaction(
            {s.tp0: 3}, kip447.group_metadata(s.member, s.group))
        await s.producer.commit_transaction()
        assert await kip447.committed_stable(s.member, [s.tp0]) == {s.tp0: 3}
        assert await read_committed(s.bootstrap, s.out) == [b"good"]
    finally:
        if second is not None:
            await second.stop()


async def test_committed_stable_waits_for_an_open_transaction(setup: Setup) -> None:
    s = setup
    meta = kip447.group_metadata(s.member, s.group)
    await s.producer.begin_transaction()
    await s.producer.send_and_wait(s.out, b"pending")
    await s.producer.send_offsets_to_transaction({s.tp0: 11}, meta)
    # the group coordinator holds the offsets, uncommitted: aiokafka's own fetch (v3, no
    # require_stable) answers at once with nothing, committed_stable must wait
    assert await s.member.committed(s.tp0) is None
    waiting = asyncio.create_task(kip447.committed_stable(s.member, [s.tp0], timeout_s=20))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    await s.producer.commit_transaction()
    assert await asyncio.wait_for(waiting, 10) == {s.tp0: 11}


async def test_committed_stable_gives_up_after_its_timeout(setup: Setup) -> None:
    s = setup
    await s.producer.begin_transaction()
    await s.producer.send_offsets_to_transaction(
        {s.tp0: 4}, kip447.group_metadata(s.member, s.group))
    with pytest.raises(KafkaError, match=r"not stable after 0\.3 s"):
        await kip447.committed_stable(s.member, [s.tp0], timeout_s=0.3)
    await s.producer.abort_transaction()
    assert await kip447.committed_stable(s.member, [s.tp0], timeout_s=5) == {s.tp0: None}


async def test_a_plain_str_group_id_keeps_aiokafkas_unfenced_commit(setup: Setup) -> None:
    s = setup
    await s.producer.begin_transaction()
    await s.producer.send_and_wait(s.out, b"plain")
    # v0 carries no generation: accepted although the group has a live member
    await s.producer.send_offsets_to_transaction({s.tp0: 9}, s.group)
    await s.producer.commit_transaction()
    assert await kip447.committed_stable(s.member, [s.tp0]) == {s.tp0: 9}
    assert await s.member.committed(s.tp0) == 9
    assert await read_committed(s.bootstrap, s.out) == [b"plain"]
