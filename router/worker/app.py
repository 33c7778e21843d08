"""The faust worker: a thin adapter that feeds the qualifier and publishes what it decides.

Commit order (at-least-once, SPEC §6). For each batch taken from the input topics:
  1. decode + decide (router.service.qualifier), all in memory;
  2. write each touched lead's state to the table's store and queue it to the changelog on the
     partition of the lead's input record (never the "current event" of the batch, which may be
     another partition's: the faust `take()` pitfall);
  3. hand every output (transitions, dead letters) to the producer;
  4. only then does `take_events` ack the batch. Faust flushes the producer before it commits
     offsets, so an offset is committed only after the state and outputs of the records below it
     are on the broker.
A crash between 3 and the commit replays the batch: outputs carry deterministic event_ids, and
state updates are idempotent (duplicate touchpoints change nothing), so a consumer that drops
repeated ids sees the same stream as without the crash.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.transport.drivers import aiokafka as faust_aiokafka
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router import __version__
from router.adapters.compacted_reader import CompactedTopicReader
from router.adapters.topics import Topics
from router.adapters.wire import decode
from router.domain.events import NamedAccount
from router.domain.rules import Rules
from router.metrics import (
    BATCH_EVENTS,
    BATCH_SECONDS,
    NAMED_ACCOUNTS,
    READY,
    REGISTRY,
)
from router.service.qualifier import Qualifier, Record
from router.settings import Settings, bootstrap_servers

log = logging.getLogger(__name__)

STATE_TABLE = "lead-state"
PROMETHEUS_MEDIA_TYPE = CONTENT_TYPE_LATEST.split(";")[0]


def _lower_fetch_wait(fetch_max_wait_ms: int) -> None:
    """Faust hard-codes fetch_max_wait_ms=1500; every hop then costs up to 1.5 s on brokers
    that hold a fetch for its whole wait (Tansu). A short wait only costs idle polls on Kafka."""
    thread_cls: Any = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(thread_cls, "_leadrouter_original_create", None)
    if original is None:
        original = thread_cls._create_worker_consumer
        thread_cls._leadrouter_original_create = original

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        return consumer

    thread_cls._create_worker_consumer = _create_worker_consumer


class RouterApp:
    """Builds the faust app and owns the pieces the web views report on."""

    def __init__(self, settings: Settings, rules: Rules) -> None:
        self.settings = settings
        self.rules = rules
        self.topics = Topics.with_prefix(settings.topic_prefix)
        self.agent_started = False
        _lower_fetch_wait(settings.fetch_max_wait_ms)
        self.accounts: CompactedTopicReader[NamedAccount] = CompactedTopicReader(
            bootstrap_servers(settings.broker),
            self.topics.accounts,
            lambda key, value: decode(NamedAccount, None, value, rules),
            on_change=lambda _k, _v: NAMED_ACCOUNTS.set(len(self.accounts.values)),
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
        )
        self.qualifier = Qualifier(
            rules, self.topics, __version__, lambda domain: domain in self.accounts.values
        )
        self.app = self._build()

    def _build(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.app_id,
            broker=s.broker,
            store="memory://",
            autodiscover=False,
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            datadir=s.data_dir,
            web_enabled=True,
            web_bind=s.web_host,
            web_host=s.web_host,
            web_port=s.web_port,
            broker_session_timeout=s.session_timeout_seconds,
            broker_heartbeat_interval=max(0.5, s.session_timeout_seconds / 5),
            broker_commit_interval=1.0,
            consumer_auto_offset_reset="earliest",
            processing_guarantee="at_least_once",
            producer_acks=-1,
            producer_linger_ms=1,
            table_standby_replicas=0,
        )
        table = app.Table(
            STATE_TABLE,
            default=None,
            key_type=bytes,  # bytes -> the "raw" codec: we encode state ourselves with orjson
            value_type=bytes,
            partitions=s.partitions,
            help="Per-lead qualification state (router.domain.qualification.LeadState).",
        )
        inputs = app.topic(
            self.topics.touchpoints,
            self.topics.profiles,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=s.partitions,
        )
        batch_size = s.batch_size
        batch_wait = s.batch_wait_ms / 1000.0
        qualifier = self.qualifier
        accounts = self.accounts

        @app.agent(inputs, name="qualify")
        async def qualify(stream: Any) -> None:
            await accounts.caught_up.wait()
            self.agent_started = True
            store: Any = table.data
            producer: AIOKafkaProducer | None = None
            async for events in stream.take_events(batch_size, within=batch_wait):
                started = time.perf_counter()
                records = [
                    Record(
                        e.message.topic,
                        e.message.partition,
                        e.message.offset,
                        e.message.key,
                        e.message.value,
                    )
                    for e in events
                ]
                result = qualifier.process(records, datetime.now(UTC), store.get)
                for key, (partition, value) in result.state_writes.items():
                    store[key] = value
                    store._key_partition[key] = partition
                    table.send_changelog(partition, key, value)
                if producer is None:
                    producer = app.producer
                for out in result.outputs:
                    await producer.send(
                        out.topic, out.key, out.value, partition=None, timestamp=None, headers=None
                    )
                BATCH_EVENTS.observe(len(records))
                BATCH_SECONDS.observe(time.perf_counter() - started)

        @app.task
        async def load_accounts() -> None:
            await accounts.run()

        @app.page("/health")
        async def health(web: Any, request: Any) -> Any:
            return web.json({"status": "alive", "version": __version__})

        @app.page("/ready")
        async def ready(web: Any, request: Any) -> Any:
            state = self.readiness()
            READY.set(1 if state["ready"] else 0)
            return web.json(state, status=200 if state["ready"] else 503)

        @app.page("/metrics")
        async def metrics(web: Any, request: Any) -> Any:
            # aiohttp wants the charset apart from the media type
            return web.bytes(generate_latest(REGISTRY), content_type=PROMETHEUS_MEDIA_TYPE)

        return app

    def readiness(self) -> dict[str, Any]:
        app = self.app
        recovered = bool(app.tables.recovery.completed.is_set())
        rebalancing = bool(getattr(app, "rebalancing", False))
        try:
            assigned = len(app.consumer.assignment())
        except Exception:  # consumer not started yet
            assigned = 0
        checks = {
            "partitions_assigned": assigned,
            "state_recovered": recovered,
            "rebalancing": rebalancing,
            "named_accounts_loaded": self.accounts.caught_up.is_set(),
            "named_accounts": len(self.accounts.values),
            "consuming": self.agent_started,
        }
        ready = recovered and not rebalancing and self.accounts.caught_up.is_set() and (
            self.agent_started
        )
        return {"ready": ready, "rules_version": self.rules.version, **checks}
