"""`leadrouter bench-latency --compare`: the exactly-once hop with each transaction switch
(router/worker/pipeline/txn_tuning.py) and the broker's partition verification turned back to
stock, one fresh broker and worker per column, in one run, so the columns can be compared.
A benchmark, not a test: figures go to the README, nothing is asserted."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from router.harness.bench.latency import measure_local
from router.worker.pipeline.txn_tuning import ENV


@dataclass(frozen=True)
class Column:
    label: str
    env: dict[str, str] = field(default_factory=dict)
    broker_config: dict[str, str] = field(default_factory=dict)


PER_TASK = "worker_transactions=0"
STOCK = f"concurrent_txn_backoff_ms=20,acks_before_offsets=0,overlap_commits=0,{PER_TASK}"
COLUMNS = (
    Column("before (aiokafka as shipped)", {ENV: STOCK}),
    Column("before, broker verification off", {ENV: STOCK},
           {"transaction.partition.verification.enable": "false"}),
    Column("+ 2 ms concurrent-txn backoff",
           {ENV: f"concurrent_txn_backoff_ms=2,acks_before_offsets=0,overlap_commits=0,"
                 f"{PER_TASK}"}),
    Column("+ acks before offsets", {ENV: f"overlap_commits=0,{PER_TASK}"}),
    Column("+ overlapped commits (per task)", {ENV: PER_TASK}),
    Column("per task + retry_backoff_ms 10", {ENV: f"retry_backoff_ms=10,{PER_TASK}"}),
    Column("per task + at most 3 txns at once", {ENV: f"max_concurrent_commits=3,{PER_TASK}"}),
    Column("per task + one txn at a time", {ENV: f"max_concurrent_commits=1,{PER_TASK}"}),
    Column("one txn per worker (default)", {}),
    Column("at-least-once (for reference)", {"LEADROUTER_PROCESSING_GUARANTEE": "at_least_once"}),
)


def _retries(name: str) -> int:
    """Produce retries the worker logged for a failed partition verification."""
    log = Path(".leadrouter") / f"{name}-worker.log"
    if not log.exists():
        return -1
    return sum("NotEnoughReplicas" in line for line in log.read_text(errors="replace").splitlines())


def run_compare(samples: int, rate: float, isolation: str) -> int:
    rows: list[tuple[str, dict[str, float | str], int]] = []
    for i, column in enumerate(COLUMNS):
        name = f"compare-{i}"
        print(f"[{i + 1}/{len(COLUMNS)}] {column.label} ...", file=sys.stderr, flush=True)
        # worker logs are appended to: an earlier run's retries must not count here
        (Path(".leadrouter") / f"{name}-worker.log").unlink(missing_ok=True)
        try:
            result = measure_local(samples, rate, isolation, name, env=column.env,
                                   broker_config=column.broker_config)
        except (RuntimeError, TimeoutError) as exc:
            print(f"bench-latency: {column.label}: {exc} (logs in .leadrouter/)",
                  file=sys.stderr)
            return 1
        rows.append((column.label, result, _retries(name)))
        print(orjson.dumps({"bench": "touchpoint_latency", "column": column.label,
                            "not_enough_replicas_retries": rows[-1][2], **result}).decode())
    print(f"\none worker, fresh embedded broker per column, {rate:.0f} triggering touchpoints/s,"
          f" {samples} samples, reader {isolation}; ms")
    print(f"{'':34} {'sql p50':>8} {'sql p99':>8} {'asg p50':>8} {'asg p99':>8}"
          f" {'NER retries':>11}")
    for label, r, retries in rows:
        print(f"{label:34} {r['sql_p50_ms']:>8} {r['sql_p99_ms']:>8} {r['assigned_p50_ms']:>8}"
              f" {r['assigned_p99_ms']:>8} {retries:>11}")
    return 0
