"""The consume-transform-produce loop of `leadrouter bench-txn`, once per client and variant.

Each variant runs in its own process (spawned by txn_loop.py), as a router worker does: the
load generator and the reader share one event loop in the parent, and librdkafka's calls block
(`commit_transaction` waits for the EndTxn), so neither may sit on the loop being measured.
Every variant does the same work per poll batch: transform each record (decode the JSON value,
add a field, encode), produce it to the output partition of the same number as its input
partition (so a transaction touches the same partitions whatever the client's partitioner),
send the batch's next offsets to the transaction, commit. Per transaction it times the steps
and counts the producers' requests by type, which says where the milliseconds go.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import orjson

# aiokafka's default fetch wait is 500 ms and librdkafka's 500 ms too; a fetch with data
# returns at once either way, 100 ms only bounds an idle wait (the reader uses the same)
FETCH_WAIT_MS = 100
TRANSACTION_TIMEOUT_MS = 10_000  # the router's
MAX_BATCH = 2000  # records per partition and batch: the router's batch_size


@dataclass(frozen=True, slots=True)
class LoopSpec:
    """What the parent tells a loop process (picklable: the process is spawned)."""

    variant: str
    bootstrap: str
    input_topic: str
    output_topic: str
    group: str
    partitions: int
    deadline: float  # wall clock: the loop stops itself by then whatever the parent does


@dataclass
class LoopStats:
    """What the loop measured; sent back to the parent as a dict."""

    processed: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    txn_ms: list[float] = field(default_factory=list)
    steps_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    requests: Counter[str] = field(default_factory=Counter)
    error: str = ""

    def batch_done(self, records: int, steps: dict[str, float]) -> None:
        now = time.time()
        if not self.processed:
            self.first_at = now
        self.processed += records
        self.last_at = now
        total = 0.0
        for name, ms in steps.items():
            self.steps_ms[name].append(ms)
            total += ms
        self.txn_ms.append(total)

    def as_dict(self) -> dict[str, Any]:
        return {"processed": self.processed, "first_at": self.first_at,
                "last_at": self.last_at, "txn_ms": self.txn_ms,
                "steps_ms": dict(self.steps_ms), "requests": dict(self.requests),
                "error": self.error}


def transform(value: bytes) -> bytes:
    """The loop's whole business logic: copy the value and add a field."""
    event = orjson.loads(value)
    event["routed_at"] = time.time()
    return orjson.dumps(event)


def request_name(request: object) -> str:
    """`AddPartitionsToTxnRequest_v1` -> `AddPartitionsToTxn`: librdkafka's stats' names."""
    return re.sub(r"(Request)?(_v\d+)?$", "", type(request).__name__)


class _Clock:
    def __init__(self) -> None:
        self.at = time.perf_counter()
        self.steps: dict[str, float] = {}

    def step(self, name: str) -> None:
        now = time.perf_counter()
        self.steps[name] = (now - self.at) * 1000
        self.at = now


# -- aiokafka ------------------------------------------------------------------------------


def _count_aiokafka_requests(stats: LoopStats, clients: set[int]) -> None:
    """Every aiokafka request goes through AIOKafkaClient.send; count the producers' ones."""
    from aiokafka.client import AIOKafkaClient

    original = AIOKafkaClient.send

    async def send(self: Any, node_id: int, request: Any, **kwargs: Any) -> Any:
        if id(self) in clients:
            stats.requests[request_name(request)] += 1
        return await original(self, node_id, request, **kwargs)

    AIOKafkaClient.send = send


async def _aiokafka_loop(spec: LoopSpec, stats: LoopStats, ready: Event, stop: Event) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from router.worker.pipeline.txn_tuning import TxnTuning

    tuning = TxnTuning()  # the product's defaults
    tuning.apply()
    transactional = spec.variant != "aiokafka-alo"
    names = ([f"{spec.group}-{p}" for p in range(spec.partitions)]
             if spec.variant == "aiokafka-per-partition" else
             [f"{spec.group}-a", f"{spec.group}-b"] if spec.variant == "aiokafka-pipelined"
             else [f"{spec.group}-all"])
    producers = [AIOKafkaProducer(
        bootstrap_servers=spec.bootstrap, acks="all", linger_ms=1,
        transactional_id=name if transactional else None,
        transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
        retry_backoff_ms=tuning.retry_backoff_ms) for name in names]
    _count_aiokafka_requests(stats, {id(p.client) for p in producers})
    consumer = AIOKafkaConsumer(
        spec.input_topic, bootstrap_servers=spec.bootstrap, group_id=spec.group,
        enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=FETCH_WAIT_MS,
        isolation_level="read_committed", max_poll_records=MAX_BATCH)
    for producer in producers:
        await producer.start()
        if transactional:  # InitProducerId before the clock starts, as the router's fence
            await producer.begin_transaction()
            await producer.abort_transaction()
    await consumer.start()

    async def commit(producer: AIOKafkaProducer, batch: dict[TopicPartition, list[Any]]
                     ) -> None:
        txn = _OpenTxn(producer)
        if transactional:
            await producer.begin_transaction()
        await _send(spec, txn, batch)
        await _finish(spec, stats, tuning, txn, None if transactional else consumer)

    try:
        while len(consumer.assignment()) < spec.partitions and time.time() < spec.deadline:
            await consumer.getmany(timeout_ms=100)
        ready.set()
        if spec.variant in ("aiokafka-ahead", "aiokafka-pipelined"):
            await _fetch_while_committing(spec, stats, consumer, producers, stop, tuning)
            return
        while not stop.is_set() and time.time() < spec.deadline:
            fetched = await consumer.getmany(timeout_ms=100,
                                             max_records=MAX_BATCH * spec.partitions)
            if not fetched:
                continue
            if len(producers) == 1:
                await commit(producers[0], fetched)
            else:  # one transaction per task, side by side, as the router's tasks commit
                await asyncio.gather(*(commit(producers[tp.partition], {tp: records})
                                       for tp, records in fetched.items()))
    finally:
        await consumer.stop()
        for producer in producers:
            await producer.stop()


@dataclass
class _OpenTxn:
    """A batch's transaction (or at-least-once commit), open to more records until finished."""

    producer: Any
    clock: _Clock = field(default_factory=_Clock)
    offsets: dict[Any, int] = field(default_factory=dict)
    acks: list[Any] = field(default_factory=list)
    records: int = 0


async def _send(spec: LoopSpec, txn: _OpenTxn, fetched: dict[Any, list[Any]]) -> None:
    """Each record transformed to the output partition of its input's number."""
    for tp, records in fetched.items():
        txn.acks.extend([await txn.producer.send(spec.output_topic, transform(r.value),
                                                 key=r.key, partition=r.partition)
                         for r in records])
        txn.offsets[tp] = records[-1].offset + 1
        txn.records += len(records)


async def _finish(spec: LoopSpec, stats: LoopStats, tuning: Any, txn: _OpenTxn,
                  consumer: Any = None) -> None:
    """Acks, then the offsets in the transaction and its commit (with `consumer`: at-least-
    once, the offsets committed by the consumer after the acks)."""
    if tuning.acks_before_offsets or consumer is not None:  # why: txn_tuning.py
        await asyncio.gather(*txn.acks)
    txn.clock.step("produce")
    if consumer is None:
        await txn.producer.send_offsets_to_transaction(txn.offsets, spec.group)
        txn.clock.step("offsets")
        await txn.producer.commit_transaction()
    else:
        await consumer.commit(txn.offsets)
    txn.clock.step("commit")
    stats.batch_done(txn.records, txn.clock.steps)


async def _fetch_while_committing(spec: LoopSpec, stats: LoopStats, consumer: Any,
                                  producers: list[Any], stop: Event, tuning: Any) -> None:
    """The loop fetches on while a transaction commits. "ahead" (the router's worker_txn.py
    today): what arrives meanwhile is sent in the next transaction, begun once the running
    one has committed. "pipelined": the next transaction is already open on a second
    producer, so its AddPartitionsToTxn and produce run beside the running commit; its
    offsets and EndTxn wait for that commit (a task's state builds on it)."""
    from collections import deque

    pipelined = spec.variant == "aiokafka-pipelined"
    free = deque(producers)
    open_txn: _OpenTxn | None = None
    committing: asyncio.Task[None] | None = None

    async def finish(txn: _OpenTxn) -> None:
        await _finish(spec, stats, tuning, txn)
        free.append(txn.producer)

    buffered: list[dict[Any, list[Any]]] = []
    while not stop.is_set() and time.time() < spec.deadline:
        waiting = open_txn is not None or bool(buffered)
        fetched = await consumer.getmany(timeout_ms=2 if waiting else 100,
                                         max_records=MAX_BATCH * spec.partitions)
        if fetched and pipelined:
            if open_txn is None:
                open_txn = _OpenTxn(free.popleft())
                await open_txn.producer.begin_transaction()
            await _send(spec, open_txn, fetched)
        elif fetched:
            buffered.append(fetched)
        if committing is not None and committing.done():
            committing.result()  # a failed commit ends the run with its error
            committing = None
        if committing is None and open_txn is not None:
            committing = asyncio.create_task(finish(open_txn))
            open_txn = None
        elif committing is None and buffered:
            txn = _OpenTxn(free.popleft())
            await txn.producer.begin_transaction()
            for batch in buffered:
                await _send(spec, txn, batch)
            buffered = []
            committing = asyncio.create_task(finish(txn))
    if committing is not None:
        await committing


# -- confluent-kafka (librdkafka) ------------------------------------------------------------


def _partition(message: Any) -> int:
    partition = message.partition()
    assert partition is not None, "a consumed message has a partition"
    return int(partition)


def _confluent_loop(spec: LoopSpec, stats: LoopStats, ready: Event, stop: Event) -> None:
    from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

    per_partition = spec.variant == "confluent-per-partition"
    # librdkafka retries a CONCURRENT_TRANSACTIONS answer (AddPartitionsToTxn, AddOffsetsToTxn:
    # the previous EndTxn's markers are still being written) after retry.backoff.ms, 100 by
    # default: the counterpart of aiokafka's 20 ms BACKOFF_OVERRIDE that txn_tuning sets to 2
    tuned = {"retry.backoff.ms": 2} if spec.variant.endswith("-2ms") else {}
    names = ([f"{spec.group}-{p}" for p in range(spec.partitions)]
             if per_partition else [f"{spec.group}-all"])
    latest_stats: dict[str, dict[str, int]] = {}

    def on_stats(name: str) -> Callable[[str], None]:
        def record(text: str) -> None:  # cumulative counters: the last report is the total
            req: Counter[str] = Counter()
            for broker in orjson.loads(text).get("brokers", {}).values():
                req.update({k: v for k, v in broker.get("req", {}).items() if v})
            latest_stats[name] = dict(req)
        return record

    producers = [Producer({
        "bootstrap.servers": spec.bootstrap, "transactional.id": name, "acks": "all",
        "linger.ms": 1, "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
        "statistics.interval.ms": 500, "stats_cb": on_stats(name), **tuned})
        for name in names]
    for producer in producers:
        producer.init_transactions(30)
    consumer = Consumer({
        "bootstrap.servers": spec.bootstrap, "group.id": spec.group,
        "isolation.level": "read_committed", "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "fetch.wait.max.ms": FETCH_WAIT_MS})
    consumer.subscribe([spec.input_topic])

    def commit(producer: Producer, messages: list[Message]) -> None:
        clock = _Clock()
        producer.begin_transaction()
        for m in messages:
            while True:
                try:
                    producer.produce(spec.output_topic, transform(m.value() or b"{}"),
                                     key=m.key(), partition=_partition(m))
                    break
                except BufferError:  # the local queue is full: serve delivery reports
                    producer.poll(0.01)
        producer.poll(0)
        clock.step("produce")  # enqueued; librdkafka sends and awaits acks in the background
        partitions = sorted({_partition(m) for m in messages})
        positions = consumer.position([TopicPartition(spec.input_topic, p) for p in partitions])
        # KIP-447: the group's generation and member id go with the offsets (fencing)
        producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
        clock.step("offsets")
        producer.commit_transaction(30)  # flushes the produce, then EndTxn
        clock.step("commit")
        stats.batch_done(len(messages), clock.steps)

    pool = ThreadPoolExecutor(len(producers)) if per_partition else None
    try:
        while len(consumer.assignment()) < spec.partitions and time.time() < spec.deadline:
            consumer.consume(num_messages=1, timeout=0.1)
        ready.set()
        while not stop.is_set() and time.time() < spec.deadline:
            # consume(n, timeout) waits until it has n messages or the timeout passed: what
            # aiokafka's getmany does (return what is buffered as soon as there is any) is a
            # poll for the first, then a consume that does not wait for the rest
            first = consumer.poll(0.1)
            messages = [] if first is None else [first, *consumer.consume(
                num_messages=MAX_BATCH * spec.partitions - 1, timeout=0)]
            for m in messages:
                if m.error() is not None:
                    raise KafkaException(m.error())
            if not messages:
                for producer in producers:
                    producer.poll(0)
                continue
            if pool is None:
                commit(producers[0], messages)
                continue
            # librdkafka's calls drop the GIL: one thread per task, commits side by side
            by_partition: dict[int, list[Message]] = defaultdict(list)
            for m in messages:
                by_partition[_partition(m)].append(m)
            list(pool.map(lambda item: commit(producers[item[0]], item[1]),
                          by_partition.items()))
        time.sleep(0.6)  # one more statistics report, so the request counts are complete
        for producer in producers:
            producer.poll(0)
    finally:
        if pool is not None:
            pool.shutdown()
        consumer.close()
        for producer in producers:
            producer.flush(5)
        for counts in latest_stats.values():
            stats.requests.update(counts)


VARIANTS: dict[str, str] = {
    "aiokafka-per-partition": "aiokafka, a transactional producer per input partition (the"
                              " router's way), txn_tuning defaults",
    "aiokafka-one": "aiokafka, one transactional producer for all partitions, txn_tuning"
                    " defaults",
    "aiokafka-ahead": "aiokafka, one transactional producer, fetching on while it commits;"
                      " what arrives meanwhile goes in the next transaction (the router's"
                      " worker_txn)",
    "aiokafka-pipelined": "aiokafka, two transactional producers: the next transaction is open"
                          " and producing while the one before commits",
    "confluent-one": "confluent-kafka, one transactional producer, KIP-447 offsets",
    "confluent-one-2ms": "confluent-kafka, one transactional producer, KIP-447 offsets,"
                         " retry.backoff.ms 2 (txn_tuning's 2 ms backoff)",
    "confluent-per-partition": "confluent-kafka, a transactional producer per input"
                               " partition, a thread each",
    "aiokafka-alo": "aiokafka, at-least-once: produce, acks, commit offsets (no transaction)",
}


def loop_main(spec: LoopSpec, ready: Event, stop: Event, conn: Connection) -> None:
    """The spawned process' entry point: run the loop, send the stats (or the error) back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    stats = LoopStats()
    try:
        if spec.variant.startswith("confluent"):
            _confluent_loop(spec, stats, ready, stop)
        else:
            asyncio.run(_aiokafka_loop(spec, stats, ready, stop))
    except Exception as exc:
        stats.error = f"{type(exc).__name__}: {exc}"
    conn.send(stats.as_dict())
    conn.close()
