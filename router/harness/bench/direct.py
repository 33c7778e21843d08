"""A prototype for `leadrouter bench`: qualification on a plain aiokafka loop, no faust.

    LEADROUTER_BROKER=kafka://127.0.0.1:9092 python -m router.harness.bench.direct \
        --inputs bench1.r1. --outputs bench1.direct. --group bench1.direct

It measures the design proposed to lift the faust ceiling ("a batched ingestion path"): the
same pure handler (`Qualifier.process`) on batches taken straight from `getmany`, lead state in
a dict, outputs sent and acknowledged, then one changelog record batch per partition, then
offsets committed: the worker's commit order without faust's per-message machinery. It is not
the router: no routing stage, no rebalance handling, no recovery from the changelog, no web
views. Inputs are read from the `--inputs` prefix, everything is written under `--outputs`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import replace
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from router import __version__
from router.adapters.topics import Topics, ensure_topics
from router.domain.rules import load_rules
from router.records import Record
from router.service.qualifier import Qualifier
from router.settings import bootstrap_servers, from_env

MAX_BATCH = 2_000


async def run(inputs: str, outputs: str, group: str) -> None:
    settings = replace(from_env(), topic_prefix=outputs)
    bootstrap = bootstrap_servers(settings.broker)
    client = settings.kafka_client_kwargs()
    source = Topics.with_prefix(inputs)
    topics = replace(Topics.with_prefix(outputs), touchpoints=source.touchpoints,
                     profiles=source.profiles, recycle=source.recycle)
    await ensure_topics(settings, Topics.with_prefix(outputs))
    changelog = f"{outputs}direct-lead-state-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client)
    await admin.start()
    try:
        if changelog not in set(await admin.list_topics()):
            await admin.create_topics([NewTopic(changelog, settings.partitions, 1)])
    finally:
        await admin.close()

    qualifier = Qualifier(load_rules(settings.rules), topics, __version__, lambda _d: False)
    state: dict[bytes, bytes] = {}
    consumer = AIOKafkaConsumer(source.profiles, source.touchpoints, group_id=group,
                                bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=MAX_BATCH,
                                fetch_max_wait_ms=settings.fetch_wait_ms(), **client)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1, **client)
    await consumer.start()
    await producer.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    try:
        while not stopping.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=MAX_BATCH)
            records = [Record(r.topic, r.partition, r.offset, r.key, r.value)
                       for rs in batches.values() for r in rs]
            if not records:
                continue
            result = qualifier.process(records, datetime.now(UTC), state.get)
            acks = [await producer.send(o.topic, o.value, key=o.key) for o in result.outputs]
            await asyncio.gather(*acks)  # outputs first, as in the worker
            by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
            partition_of = {r.key: r.partition for r in records}  # a lead's key: one partition
            for key, value in result.writes:
                assert value is not None  # the qualifier never deletes a lead
                state[key] = value
                by_partition.setdefault(partition_of[key], []).append((key, value))
            sent = []
            for partition, writes in by_partition.items():
                batch = producer.create_batch()
                for key, value in writes:
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        sent.append(await producer.send_batch(batch, changelog,
                                                              partition=partition))
                        batch = producer.create_batch()
                        batch.append(key=key, value=value, timestamp=None)
                sent.append(await producer.send_batch(batch, changelog, partition=partition))
            await asyncio.gather(*sent)  # then state
            await consumer.commit()  # then offsets
    finally:
        await consumer.stop()
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.harness.bench.direct",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", required=True, help="topic prefix to read inputs from")
    parser.add_argument("--outputs", required=True, help="topic prefix to write under")
    parser.add_argument("--group", required=True, help="consumer group (committed offsets)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args.inputs, args.outputs, args.group))
    return 0


if __name__ == "__main__":
    sys.exit(main())
