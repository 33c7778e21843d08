"""The one faust-streaming 0.15.3 fix still in use: the benchmark's faust floor
(router.harness.bench.floor) runs faust, and nothing else does.

Fetch wait. Faust hard-codes fetch_max_wait_ms=1500; every hop then costs up to 1.5 s on
brokers that hold a fetch for its whole wait (Tansu). A short wait only costs idle polls on
Kafka. The floor gets the worker's fetch wait, so the two are compared on equal terms.

The worker's own consumer fixes (stale read offsets after a rebalance, offset gaps committed
over, one missing record committed over, and the stall guard that sought back to unprocessed
records) went with faust's consumer: the worker now consumes every input topic through
router.worker.pipeline, which commits only the offsets of batches it finished.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka


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
