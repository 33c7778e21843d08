"""Every worker knows every named account: two independent readers of routing.accounts (as two
workers would run) both see all keys from all partitions, updates and tombstones included.
This is the check that a faust GlobalTable failed in some versions (faust-streaming #283)."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from router.adapters.compacted_reader import CompactedTopicReader
from router.harness.brokers import LocalBroker
from tests.integration.conftest import new_prefix


async def _eventually(check: object, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_two_readers_see_every_account_update_and_tombstone(
    broker: LocalBroker, producer: AIOKafkaProducer
) -> None:
    topic = new_prefix() + "routing.accounts"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 8, 1, topic_configs={"cleanup.policy": "compact"})])
    await admin.close()

    domains = [f"acct{i}.example" for i in range(30)]
    for d in domains:
        await producer.send_and_wait(
            topic, orjson.dumps({"account_domain": d, "owner_rep_id": "R-1"}), key=d.encode())

    def parse(key: bytes, value: bytes) -> str:
        return str(orjson.loads(value)["owner_rep_id"])

    readers = [CompactedTopicReader([broker.bootstrap], topic, parse) for _ in range(2)]
    tasks = [asyncio.create_task(r.run()) for r in readers]
    try:
        for r in readers:
            await asyncio.wait_for(r.caught_up.wait(), 15)
            assert set(r.values) == set(domains)  # caught_up means "has everything so far"
        # live updates and removals reach both
        await producer.send_and_wait(
            topic, orjson.dumps({"account_domain": domains[0], "owner_rep_id": "R-9"}),
            key=domains[0].encode())
        await producer.send_and_wait(topic, None, key=domains[1].encode())
        await producer.send_and_wait(topic, b"{broken", key=b"bad.example")
        await _eventually(lambda: all(
            r.values.get(domains[0]) == "R-9" and domains[1] not in r.values and r.refused == 1
            for r in readers))
    finally:
        for r in readers:
            r.stop()
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
