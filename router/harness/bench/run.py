"""`leadrouter bench`: one run of every phase (router/harness/bench/phases.py), a table and one
JSON line (report.py); every process it starts is stopped on the way out."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

import orjson

from router.harness.bench.measure import _STARTED, _log
from router.harness.bench.phases import QUICK, Bench, BenchConfig, Processes
from router.harness.bench.report import json_line, render_memory_table, render_table
from router.harness.brokers import KafkaBroker, TansuBroker, describe, local_broker


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_bench(broker: str | None = None, quick: bool = False,
              workdir: Path = Path(".leadrouter") / "bench",
              config: BenchConfig | None = None, kind: str | None = None) -> int:
    """The `leadrouter bench` command: prints the table and one JSON line; 1 on failure."""
    cfg = config or (QUICK if quick else BenchConfig())
    workdir.mkdir(parents=True, exist_ok=True)
    for old_log in workdir.glob("*.log"):  # one run's logs at a time
        old_log.unlink(missing_ok=True)
    began = time.monotonic()
    _STARTED[0] = began
    procs = Processes()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    embedded: KafkaBroker | TansuBroker | None = None
    run = f"bench{uuid.uuid4().hex[:6]}"
    try:
        if broker is None:
            embedded = local_broker(kind, log_path=workdir / "broker.log").start()
            broker = embedded.url
            _log(f"{describe(embedded)} on {broker}")
            if embedded.kind == "tansu":
                # the faust floor and the prototype do not recognise the broker as the worker
                # does; they get its fetch wait the same way (inherited by every phase)
                os.environ["LEADROUTER_BROKER_QUIRKS"] = "tansu"
        bench = Bench(cfg, broker, workdir, procs, run=run,
                      broker_pids=embedded.pids if embedded else [],
                      broker_kind=embedded.kind if embedded else "kafka")
        result = asyncio.run(bench.memory_phases() if cfg.mode == "memory"
                             else bench.all_phases())
    except KeyboardInterrupt:
        print("leadrouter bench: interrupted; every process it started is stopped",
              file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError, ValueError, OSError) as exc:
        print(f"leadrouter bench: {exc} (logs in {workdir}/)", file=sys.stderr)
        return 1
    finally:
        procs.close()
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(workdir / run, ignore_errors=True)  # the workers' data dirs
        signal.signal(signal.SIGTERM, previous)
    result["wall_seconds"] = round(time.monotonic() - began, 1)
    print(render_memory_table(result) if cfg.mode == "memory" else render_table(result))
    if cfg.mode == "memory":  # a subset of the figures: no target verdicts to check
        print(orjson.dumps({"bench": "leadrouter", **result}).decode(), flush=True)
    else:
        print(json_line(result), flush=True)
    return 0
