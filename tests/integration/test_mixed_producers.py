"""Inputs from producers this project did not write (librdkafka through confluent-kafka), with
partitioners other than Kafka's murmur2, on the real broker and the real worker process.

A lead whose profile comes from a murmur2 producer (a Java CRM connector) and whose touchpoints
come from librdkafka's default (consistent_random: CRC32) has its records on two partitions;
the worker forwards the misplaced ones to the lead's partition (service/partitioning.py), so
every lead qualifies and routes, through a SIGKILL too, and a librdkafka read_committed reader
sees each output once.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, Producer

from router.adapters.topics import Topics
from router.harness.brokers import LocalBroker
from router.harness.workers import WorkerProcess
from router.service.partitioning import crc32_partition, murmur2_partition
from tests.integration.conftest import new_prefix, send, start_worker

PARTITIONS = 8  # the worker's default


def now() -> str:
    return datetime.now(UTC).isoformat()


def misplaced_leads(count: int, tag: str) -> list[str]:
    """Lead ids librdkafka's default partitioner puts off their murmur2 partition."""
    leads: list[str] = []
    for i in range(10 * count):
        lead = f"L-{tag}{i}"
        key = lead.encode()
        if crc32_partition(key, PARTITIONS) != murmur2_partition(key, PARTITIONS):
            leads.append(lead)
        if len(leads) == count:
            return leads
    raise AssertionError("not enough misplaced keys")


def profile(lead: str) -> dict[str, Any]:
    return {"lead_id": lead, "updated_at": now(), "seniority": "vp", "country": "DE",
            "company": {"employees": 300, "industry": "saas"}}


def demo_request(lead: str) -> dict[str, Any]:
    return {"event_id": f"{lead}-demo", "lead_id": lead, "type": "demo_request",
            "occurred_at": now()}


def librdkafka_producer(broker: LocalBroker, **config: str) -> Producer:
    """librdkafka's defaults (partitioner consistent_random), unless `config` says otherwise."""
    return Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 1,
                     **config})


def produce_all(producer: Producer, topic: str, records: list[tuple[str, dict[str, Any]]]
                ) -> None:
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for key, value in records:
        producer.produce(topic, orjson.dumps(value), key=key.encode(), on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0, "librdkafka did not deliver everything"
    assert failures == []


def read_committed(broker: LocalBroker, topic: str, until: Callable[[list[Any]], bool],
                   timeout: float = 60.0, settle: float = 2.0) -> list[Any]:
    """Every record of `topic` as librdkafka reads it with isolation.level=read_committed:
    (event_id or partition:offset, key, decoded value), repeats kept so they can be counted."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap,
                         "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                         "isolation.level": "read_committed",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        done_at: float | None = None
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                value = orjson.loads(msg.value())
                out.append((value.get("event_id") or f"{msg.partition()}:{msg.offset()}",
                            msg.key(), value))
            if done_at is None and until(out):
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at >= settle:
                break
    finally:
        consumer.close()
    return out


def sql_ids(records: list[Any]) -> set[str]:
    return {ident for ident, _k, value in records if value.get("type") == "lead.sql"}


@pytest.fixture
def mixed_worker(broker: LocalBroker, tmp_path: Path) -> Iterator[tuple[WorkerProcess, str]]:
    prefix = new_prefix()
    worker = start_worker(broker, prefix, tmp_path)
    yield worker, prefix
    worker.stop()


async def test_murmur2_profiles_and_librdkafka_touchpoints_qualify_and_route(
    mixed_worker: tuple[WorkerProcess, str], broker: LocalBroker, producer: AIOKafkaProducer,
) -> None:
    worker, prefix = mixed_worker
    topics = Topics.with_prefix(prefix)
    mixed = misplaced_leads(12, "mix")
    alone = misplaced_leads(6, "rdk")  # profile and touchpoints both from librdkafka
    leads = mixed + alone
    await send(producer, topics.reps, "R-1", {"rep_id": "R-1", "pools": ["EMEA"],
                                               "max_open_leads": 100})
    for lead in mixed:  # the CRM connector: Kafka's default partitioner
        await send(producer, topics.profiles, lead, profile(lead))
    rdk = librdkafka_producer(broker)
    produce_all(rdk, topics.profiles, [(lead, profile(lead)) for lead in alone])
    produce_all(rdk, topics.touchpoints, [(lead, demo_request(lead)) for lead in leads])

    expected = {f"{lead}:c1:sql" for lead in leads}
    transitions = await asyncio.to_thread(
        read_committed, broker, topics.transitions, lambda rs: expected <= sql_ids(rs))
    assert sql_ids(transitions) == expected
    repeats = [i for i, n in Counter(i for i, _k, _v in transitions).items() if n > 1]
    assert repeats == []

    assignments = await asyncio.to_thread(
        read_committed, broker, topics.assignments,
        lambda rs: {v["lead_id"] for _i, _k, v in rs} >= set(leads))
    assert sorted(v["lead_id"] for _i, _k, v in assignments) == sorted(leads)
    assert {v["type"] for _i, _k, v in assignments} == {"lead.assigned"}

    # sales activity from a third partitioner (FNV-1a, as Go's Sarama) reaches routing
    produce_all(librdkafka_producer(broker, partitioner="fnv1a"), topics.activity,
                [(lead, {"event_id": f"{lead}-touch", "lead_id": lead, "rep_id": "R-1",
                         "type": "first_touch", "occurred_at": now()}) for lead in leads])
    sla = await asyncio.to_thread(
        read_committed, broker, topics.sla,
        lambda rs: {v["lead_id"] for _i, _k, v in rs if v["type"] == "sla.met"} >= set(leads))
    assert sorted(v["lead_id"] for _i, _k, v in sla if v["type"] == "sla.met") == sorted(leads)

    # the lead view finds each lead whole, on its murmur2 partition
    status, view = worker.get(f"/leads/{leads[0]}")
    assert status == 200
    assert view["qualification"]["stage"] == "sql"
    assert "partitioning" not in view["qualification"]
    with urllib.request.urlopen(worker.base_url + "/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert f'leadrouter_misplaced_records_total{{topic="{topics.touchpoints}"}} 18.0' in metrics
    assert f'leadrouter_misplaced_records_total{{topic="{topics.profiles}"}} 6.0' in metrics
    assert "records keyed for another partition" in worker.log_tail(400)


async def test_a_sigkill_while_repartitioning_loses_and_doubles_nothing(
    broker: LocalBroker, producer: AIOKafkaProducer, tmp_path: Path,
) -> None:
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    leads = misplaced_leads(300, "kill")
    worker = start_worker(broker, prefix, tmp_path)
    try:
        await send(producer, topics.reps, "R-1", {"rep_id": "R-1", "pools": ["EMEA"],
                                                   "max_open_leads": 1000})
        for lead in leads:
            await send(producer, topics.profiles, lead, profile(lead))
        produce_all(librdkafka_producer(broker), topics.touchpoints,
                    [(lead, demo_request(lead)) for lead in leads])
        # killed once the forwarding is under way, before it can be finished
        await asyncio.to_thread(read_committed, broker, topics.repartition_touchpoints,
                                lambda rs: len(rs) >= 1, 30.0, 0.0)
        worker.kill()
    finally:
        worker.stop()
    worker = start_worker(broker, prefix, tmp_path)
    try:
        expected = {f"{lead}:c1:sql" for lead in leads}
        transitions = await asyncio.to_thread(
            read_committed, broker, topics.transitions, lambda rs: expected <= sql_ids(rs),
            90.0)
        assert sql_ids(transitions) == expected
        sql_counts = Counter(i for i, _k, v in transitions if v["type"] == "lead.sql")
        assert {n for n in sql_counts.values()} == {1}
        forwarded = await asyncio.to_thread(
            read_committed, broker, topics.repartition_touchpoints,
            lambda rs: len(rs) >= len(leads), 30.0)
        counts = Counter(i for i, _k, _v in forwarded)
        assert set(counts) == {f"{lead}-demo" for lead in leads}
        assert set(counts.values()) == {1}, "a touchpoint was forwarded twice"
        for _i, key, _v in forwarded[:20]:
            assert key.decode() in leads
        # and routed: one lead.assigned each, read once by a read_committed librdkafka reader
        assignments = await asyncio.to_thread(
            read_committed, broker, topics.assignments,
            lambda rs: {v["lead_id"] for _i, _k, v in rs if v["type"] == "lead.assigned"}
            >= set(leads), 60.0)
        assigned = Counter(v["lead_id"] for _i, _k, v in assignments
                           if v["type"] == "lead.assigned")
        assert set(assigned) == set(leads)
        assert set(assigned.values()) == {1}
    finally:
        worker.stop()


async def test_in_place_keeps_records_where_they_arrived_and_lead_show_finds_them(
    broker: LocalBroker, tmp_path: Path,
) -> None:
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    worker = start_worker(broker, prefix, tmp_path, LEADROUTER_MISPLACED_RECORDS="in_place")
    try:
        [lead] = misplaced_leads(1, "inplace")
        rdk = librdkafka_producer(broker)  # both of its records land on the CRC32 partition
        produce_all(rdk, topics.profiles, [(lead, profile(lead))])
        produce_all(rdk, topics.touchpoints, [(lead, demo_request(lead))])
        await asyncio.to_thread(read_committed, broker, topics.transitions,
                                lambda rs: f"{lead}:c1:sql" in sql_ids(rs), 30.0, 0.0)
        status, view = worker.get(f"/leads/{lead}")
        assert status == 200
        placed = view["qualification"]["partitioning"]
        assert placed["murmur2_partition"] == murmur2_partition(lead.encode(), PARTITIONS)
        assert placed["found_on_partitions"] == [crc32_partition(lead.encode(), PARTITIONS)]
    finally:
        worker.stop()
