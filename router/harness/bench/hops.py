"""`leadrouter bench-latency --hops`: where the milliseconds of an exactly-once hop go.

The worker runs with LEADROUTER_TRACE=1 and JSON logs; its processor then logs one "txn" line
per transaction (milliseconds per step: with one producer per worker, the wait for the
transaction before it; handing the records to the producer; AddPartitionsToTxn with the produce
and its acks; AddOffsetsToTxn with TxnOffsetCommit; EndTxn) and one "batch timing" line per loop
(how old each topic's oldest record was when handled, and the handler's time).
This reads them back into percentiles. A benchmark, not a test."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def breakdown(log: Path) -> dict[str, dict[str, float]]:
    """Percentiles per step, from a JSON-lines worker log."""
    steps: dict[str, list[float]] = defaultdict(list)
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry: dict[str, Any] = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        message = entry.get("message") or entry.get("msg")
        if message == "txn":
            ms = entry.get("ms") or {}
            for step, value in ms.items():
                steps[f"txn: {step}"].append(float(value))
            # "wait" (one producer per worker: from the first batch decided to the begin) is
            # time before the transaction, not in it
            steps["txn: total"].append(sum(float(v) for k, v in ms.items() if k != "wait"))
        elif message == "batch timing":
            steps["batch: handle"].append(float(entry["handle_ms"]))
            for topic, age in (entry.get("input_age_ms") or {}).items():
                steps[f"input age when handled: {topic.rsplit('.', 1)[-1]}"].append(float(age))
    return {name: {"n": len(v), "p50": _pct(v, 0.5), "p99": _pct(v, 0.99),
                   "mean": round(statistics.fmean(v), 1)}
            for name, v in sorted(steps.items()) if v}


def render(table: dict[str, dict[str, float]]) -> str:
    rows = [f"{'step':<48} {'n':>7} {'p50 ms':>8} {'p99 ms':>8} {'mean':>8}"]
    rows += [f"{name:<48} {s['n']:>7.0f} {s['p50']:>8} {s['p99']:>8} {s['mean']:>8}"
             for name, s in table.items()]
    return "\n".join(rows)
