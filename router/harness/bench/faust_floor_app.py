"""The faust app of the benchmark's floor (router.harness.bench.floor): faust-streaming runs
here and nowhere else.

`new_faust_app` carries the broker settings the worker used when it ran on faust, so the floor
stays comparable; `broker_credentials` is the same connection security as
Settings.kafka_client_kwargs, in faust's terms.

The one faust-streaming 0.15.3 fix still in use, the fetch wait (`lower_fetch_wait`): faust
hard-codes fetch_max_wait_ms=1500; every hop then costs up to 1.5 s on brokers that hold a
fetch for its whole wait (Tansu). A short wait only costs idle polls on Kafka. The floor gets
the worker's fetch wait, so the two are compared on equal terms.

The worker's own consumer fixes (stale read offsets after a rebalance, offset gaps committed
over, one missing record committed over, and the stall guard that sought back to unprocessed
records) went with faust's consumer: the worker now consumes every input topic through
router.worker.pipeline, which commits only the offsets of batches it finished.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from router.settings import Settings


def broker_credentials(settings: Settings) -> Any:
    """The same connection security as kafka_client_kwargs, in faust's terms."""
    context = settings.ssl_context()
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.password(),
            ssl_context=context,
            mechanism=settings.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def new_faust_app(s: Settings, app_id: str, *, web_enabled: bool, store: str) -> faust.App:
    """The faust settings of the benchmark's floor: the broker settings the worker used when
    it ran on faust, so the floor stays comparable."""
    return faust.App(
        app_id,
        broker=s.broker,
        store=store,
        autodiscover=False,
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        datadir=s.data_dir,
        web_enabled=web_enabled,
        web_bind=s.web_host,
        web_host=s.web_host,
        web_port=s.web_port,
        canonical_url=s.advertised_url(),
        broker_session_timeout=s.session_timeout_seconds,
        broker_heartbeat_interval=max(0.5, s.session_timeout_seconds / 5),
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        producer_acks=-1,
        producer_linger_ms=1,
        table_standby_replicas=0,
        broker_credentials=broker_credentials(s),
    )


def lower_fetch_wait(fetch_max_wait_ms: int) -> None:
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
