"""The hop breakdown reads the processor's trace lines back (router/harness/bench/hops.py)."""

from __future__ import annotations

from pathlib import Path

import orjson

from router.harness.bench.hops import breakdown, render


def test_breakdown_has_percentiles_per_transaction_step_and_input_age(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    lines = [orjson.dumps({"msg": "txn", "task": "leads-0",
                           "ms": {"queue": 1.0, "end_txn": float(i)}}) for i in range(1, 101)]
    lines.append(orjson.dumps({"msg": "batch timing", "handle_ms": 2.5,
                               "input_age_ms": {"leads.touchpoints": 40.0}}))
    lines.append(b"not json: a text line from the broker client")
    log.write_bytes(b"\n".join(lines))
    table = breakdown(log)
    assert table["txn: end_txn"] == {"n": 100, "p50": 51.0, "p99": 100.0, "mean": 50.5}
    assert table["txn: total"]["p50"] == 52.0
    assert table["input age when handled: touchpoints"]["p50"] == 40.0
    assert table["batch: handle"]["n"] == 1
    assert "txn: queue" in render(table)


def test_the_wait_before_a_worker_transaction_is_its_own_row_not_part_of_the_total(
        tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_bytes(orjson.dumps({"msg": "txn", "tasks": 3,
                                  "ms": {"wait": 30.0, "queue": 1.0, "end_txn": 4.0}}))
    table = breakdown(log)
    assert table["txn: wait"]["p50"] == 30.0
    assert table["txn: total"]["p50"] == 5.0
