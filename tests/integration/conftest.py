"""Integration fixtures: a real broker on free loopback ports, real worker processes.

The broker is Apache Kafka (KRaft, from the pinned jars) unless LEADROUTER_LOCAL_BROKER=tansu.
It is started once per test process (pytest-xdist runs several) and stopped at the end; each
test module that needs a worker gets its own topic prefix, so modules never see each other's
records. `tansu_broker` is the pip-only fallback, for the small smoke set that keeps that
path honest; it is started only by the tests that ask for it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import RecordMetadata

from router.adapters.topics import Topics
from router.harness.brokers import (
    BrokerError,
    LocalBroker,
    TansuBroker,
    default_kind,
    local_broker,
)
from router.harness.workers import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    kind = default_kind()
    log = tmp_path_factory.mktemp("broker") / f"{kind}.log"
    try:
        started = local_broker(kind, log_path=log).start()
    except BrokerError as exc:
        # never fall back to Tansu silently: every test that needs the broker errors with this
        pytest.fail(f"the {kind} test broker cannot start: {exc}", pytrace=False)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def tansu_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with TansuBroker(log_path=log) as b:
        yield b


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


def start_worker(broker: LocalBroker, prefix: str, log_dir: Path, **env: str
                 ) -> WorkerProcess:
    worker = WorkerProcess(
        broker.url,
        log_dir / f"worker-{prefix}{uuid.uuid4().hex[:4]}.log",
        env={
            "LEADROUTER_TOPIC_PREFIX": prefix,
            "LEADROUTER_DATA_DIR": str(log_dir / "data"),
            "LEADROUTER_BROKER_WAIT_SECONDS": "20",
            **env,
        },
    ).start()
    try:
        worker.wait_ready(90)
    except Exception:
        print(worker.log_tail())
        worker.stop()
        raise
    return worker


@pytest.fixture(scope="module")
def prefix() -> str:
    return new_prefix()


@pytest.fixture(scope="module")
def topics(prefix: str) -> Topics:
    return Topics.with_prefix(prefix)


@pytest.fixture(scope="module")
def worker(broker: LocalBroker, prefix: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[WorkerProcess]:
    w = start_worker(broker, prefix, tmp_path_factory.mktemp("worker"))
    yield w
    w.stop()


@pytest.fixture
async def producer(broker: LocalBroker) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=1,
                         max_request_size=4 * 1024 * 1024)
    await p.start()
    yield p
    await p.stop()


async def create_topic(broker: LocalBroker, suffix: str, partitions: int = 1,
                       configs: dict[str, str] | None = None) -> str:
    """A topic of its own for one test (a fresh random name ending in `suffix`)."""
    topic = f"t{uuid.uuid4().hex[:8]}.{suffix}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs or {})])
    finally:
        await admin.close()
    return topic


async def send(producer: AIOKafkaProducer, topic: str, key: str | bytes | None,
               value: dict[str, Any] | bytes) -> RecordMetadata:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    k = key.encode() if isinstance(key, str) else key
    return await producer.send_and_wait(topic, raw, key=k)


async def wait_processed(broker: LocalBroker, group: str, sent: RecordMetadata,
                         timeout: float = 20.0) -> None:
    """Barrier: wait until the worker group has committed past `sent` (so it was processed;
    the worker commits only after the outputs and state of a record are flushed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        tp = TopicPartition(sent.topic, sent.partition)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
            meta = offsets.get(tp)
            if meta is not None and meta.offset > sent.offset:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"group {group} did not commit past {tp}@{sent.offset}")
    finally:
        await admin.close()


async def collect(broker: LocalBroker, topic: str, until: Any, timeout: float = 30.0,
                  settle: float = 1.0, keep_repeats: bool = False,
                  max_value_bytes: int | None = None) -> list[dict[str, Any]]:
    """Read `topic` from the beginning until `until(records)` holds (then `settle` s more,
    to catch anything extra), or `timeout` passes. Returns decoded values; repeated event_ids
    are dropped (as a consumer of an at-least-once stream does) unless `keep_repeats`."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100,
                                enable_auto_commit=False)
    await consumer.start()
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + timeout
        done_at: float | None = None
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for r in records:
                    if max_value_bytes is not None:
                        assert len(r.value) < max_value_bytes, len(r.value)
                    value = orjson.loads(r.value)
                    ident = value.get("event_id") or f"{r.partition}:{r.offset}"
                    if ident in seen and not keep_repeats:
                        continue
                    seen.add(ident)
                    # keys of refused records need not be UTF-8
                    value["_key"] = r.key.decode("utf-8", "replace") if r.key is not None else None
                    out.append(value)
            if done_at is None and until(out):
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at >= settle:
                break
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return out
