"""bench-txn's loops on the suite's broker: each variant, ~3 s at a low rate, must deliver
every input exactly once to its output as a read_committed reader sees it (counted by
sequence number). That check is what makes the benchmark's latency figures meaningful: a
loop that lost or repeated records could be fast for the wrong reason."""

from __future__ import annotations

from dataclasses import replace

import pytest

from router.harness.bench.txn_loop import TxnBenchConfig, exactly_once, run_variant
from router.harness.bench.txn_variants import VARIANTS
from router.harness.brokers import LocalBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SMALL = replace(TxnBenchConfig(), partitions=3, rate=60.0, duration=3.0, warmup=0.5,
                drain=15.0, ready=45.0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_delivers_every_input_exactly_once(broker: LocalBroker, variant: str) -> None:
    if broker.kind != "kafka":
        pytest.skip("transactions need Apache Kafka (Tansu has none)")
    result = run_variant(broker.bootstrap, variant, SMALL)
    assert result["error"] == "", result["error"]
    assert result["sent"] == int(SMALL.rate * SMALL.duration)
    assert (result["missing"], result["duplicates"], result["unexpected"]) == (0, 0, 0), result
    assert exactly_once(result)
    assert result["txns"] > 0 and result["e2e_p99_ms"] is not None
