"""Fault injection under traffic, then the verifier: `leadrouter chaos`.

  run.py        the short and full runs (worker faults; broker faults on three Kafka nodes)
  kill_loop.py  `--kill-loop`: many worker SIGKILLs, repeated runs and their loss rate
  faults.py     which broker node to hurt (partition leaders, the KRaft quorum's leader)
  session.py    topics, workers, traffic, probes and the catch-up wait every run shares
  traces.py     which input records of a lost lead never reached the worker (`--trace`)
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "main"]  # light: the CLI builds its parser from this module


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--short", action="store_true", help="only kill/restart and add a worker")
    p.add_argument("--rate", type=float, default=60.0, help="touchpoints per second")
    p.add_argument("--kind", choices=("kafka", "tansu"), default=None,
                   help="broker (default LEADROUTER_LOCAL_BROKER, else kafka); the full run"
                   " on kafka uses three nodes and broker faults")
    p.add_argument("--trace", action="store_true", help="workers log per-batch traces"
                   " (LEADROUTER_TRACE=1, kept in the run's folder); lost outputs are then"
                   " explained record by record")
    p.add_argument("--strict", action="store_true", help="exactly-once check: read_committed,"
                   " every expected output exactly once, no repeated event id")
    p.add_argument("--worker-src", type=Path, default=None, help="run the workers from this"
                   " source tree (PYTHONPATH), e.g. `git archive` of an older commit, for"
                   " before/after figures; the tooling and verifier stay this checkout's")
    loop = p.add_argument_group("kill loop (issue 12)")
    loop.add_argument("--kill-loop", action="store_true",
                      help="many SIGKILLs of each worker in turn under steady traffic")
    loop.add_argument("--kills", type=int, default=8, help="SIGKILLs per run")
    loop.add_argument("--gap", type=float, default=3.0, help="seconds before a killed worker"
                      " is restarted")
    loop.add_argument("--repeat", type=int, default=1, help="runs; prints the loss rate")
    loop.add_argument("--seed", type=int, default=None, help="first run's seed (run i uses"
                      " seed + i); printed, so a failing run can be replayed")
    loop.add_argument("--traffic-seconds", type=float, default=70.0,
                      help="seconds of traffic per run")


def main(args: argparse.Namespace) -> int:
    if args.kill_loop:
        from router.harness.chaos import kill_loop

        return kill_loop.main(repeat=args.repeat, seed=args.seed, kills=args.kills,
                              gap_s=args.gap, traffic_s=args.traffic_seconds, rate=args.rate,
                              kind=args.kind, trace=args.trace, strict=args.strict,
                              worker_src=args.worker_src)
    from router.harness.chaos import run

    return run.main(full=not args.short, rate=args.rate, kind=args.kind, trace=args.trace,
                    strict=args.strict, worker_src=args.worker_src)
