"""bench-txn's pure parts: percentiles, the summary and its exactly-once verdict, the table,
the command's defaults and argument checks (the loops themselves: tests/integration)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from router.cli import build_parser
from router.harness.bench.txn_loop import (
    ReaderResult,
    TxnBenchConfig,
    config_from_args,
    exactly_once,
    percentile,
    render_table,
    summarize,
)
from router.harness.bench.txn_variants import VARIANTS, request_name, transform


def test_percentile_nearest_rank() -> None:
    values = [float(x) for x in range(1, 101)]  # 1..100, shuffled order must not matter
    assert percentile(values[::-1], 0.50) == 51.0  # round(0.5 * 99) = 50 -> the 51st
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def _stats(**extra: Any) -> dict[str, Any]:
    return {"processed": 10, "first_at": 100.0, "last_at": 102.0,
            "txn_ms": [10.0, 20.0, 30.0, 40.0],
            "steps_ms": {"produce": [1.0, 2.0], "commit": [3.0]},
            "requests": {"Produce": 4, "AddPartitionsToTxn": 6}, "error": "", **extra}


def test_summary_counts_and_verdict() -> None:
    reader = ReaderResult(sent=10, counts=Counter(range(10)), latencies_ms=[5.0, 15.0, 25.0])
    r = summarize("confluent-one", reader, _stats())
    assert r["events_per_s"] == 5.0  # 10 records over 2 s of processing
    assert (r["txns"], r["txn_p50_ms"], r["txn_p99_ms"]) == (4, 30.0, 40.0)
    assert r["e2e_p50_ms"] == 15.0 and r["e2e_max_ms"] == 25.0
    assert r["records_per_txn"] == 2.5
    assert r["requests_per_txn"] == {"AddPartitionsToTxn": 1.5, "Produce": 1.0}
    assert r["steps_p50_ms"] == {"produce": 1.0, "commit": 3.0}  # round(0.5) = 0
    assert exactly_once(r)
    orjson.dumps(r)  # the --json line


@pytest.mark.parametrize(("counts", "error", "field"), [
    (Counter({**dict.fromkeys(range(10), 1), 3: 2}), "", "duplicates"),
    (Counter(range(9)), "", "missing"),
    (Counter(range(11)), "", "unexpected"),
    (Counter(range(10)), "KafkaError: boom", "error"),
])
def test_summary_flags_anything_but_exactly_once(counts: Counter[int], error: str,
                                                  field: str) -> None:
    r = summarize("aiokafka-one", ReaderResult(sent=10, counts=counts), _stats(error=error))
    assert r[field]
    assert not exactly_once(r)


def test_failed_variant_without_figures_renders() -> None:
    r = summarize("aiokafka-one", ReaderResult(), {"error": "did not join"})
    assert r["txns"] == 0 and r["events_per_s"] is None and r["e2e_p99_ms"] is None
    assert not exactly_once(r)
    text = render_table([r], TxnBenchConfig())
    assert "did not join" in text and " - " in text


def test_table_has_one_aligned_row_per_variant() -> None:
    reader = ReaderResult(sent=10, counts=Counter(range(10)), latencies_ms=[1234.5])
    rows = [summarize(v, reader, _stats()) for v in ("aiokafka-per-partition", "confluent-one")]
    lines = render_table(rows, TxnBenchConfig()).splitlines()
    header, rule = lines[1], lines[2]
    assert header.startswith("variant") and "exactly once" in header
    assert len(rule) == len(header)
    assert lines[3].startswith("aiokafka-per-partition") and lines[3].endswith("yes")
    assert lines[4].startswith("confluent-one") and "1,234.5" in lines[4]
    assert "producer requests per txn: AddPartitionsToTxn 1.5, Produce 1" in lines[5]


def test_command_defaults_match_the_brief() -> None:
    args = build_parser().parse_args(["bench-txn"])
    cfg = config_from_args(args)
    assert cfg == TxnBenchConfig()
    assert (cfg.partitions, cfg.rate, cfg.duration) == (9, 1000.0, 20.0)
    assert cfg.variants == tuple(VARIANTS)
    assert {"aiokafka-per-partition", "aiokafka-one", "confluent-one",
            "aiokafka-alo"} <= set(cfg.variants)
    assert args.broker is None and not args.json


def test_command_arguments() -> None:
    args = build_parser().parse_args(["bench-txn", "--rate", "2000", "--variants",
                                      "confluent-one, aiokafka-one", "--json"])
    cfg = config_from_args(args)
    assert cfg.rate == 2000.0 and cfg.variants == ("confluent-one", "aiokafka-one")
    for bad in (["--variants", "kafka-python"], ["--variants", ","], ["--rate", "0"],
                ["--warmup", "30"]):
        with pytest.raises(ValueError):
            config_from_args(build_parser().parse_args(["bench-txn", *bad]))


def test_transform_copies_and_adds_a_field() -> None:
    out = orjson.loads(transform(orjson.dumps({"seq": 3, "sent": 1.5})))
    assert out["seq"] == 3 and out["sent"] == 1.5 and out["routed_at"] > 0


def test_request_names_match_librdkafka_stats() -> None:
    class AddPartitionsToTxnRequest_v1:  # aiokafka names its versions so
        pass

    class EndTxnRequest:
        pass

    assert request_name(AddPartitionsToTxnRequest_v1()) == "AddPartitionsToTxn"
    assert request_name(EndTxnRequest()) == "EndTxn"
