"""`leadrouter chaos --kill-loop` (issue 12): many SIGKILLs of each worker in turn, at random
points under steady traffic, each restarted after a gap; `--repeat N` runs it N times on one
broker (a fresh topic prefix per run) and prints the loss rate.

A run is reproducible from its seed: the seed draws the kill times and drives the traffic
generator. Kills never overlap: a worker is killed only after the previous one was restarted
and had `MIN_UP_SECONDS` to rejoin, so every kill lands in a different phase of a rebalance.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from router.harness.brokers import default_kind, free_port, local_broker
from router.harness.chaos.session import (
    Broker,
    ChaosRun,
    Log,
    settle_and_verify,
    stamper,
    traffic,
)
from router.harness.workers import WorkerProcess
from router.tools.verify import Lost

WORKERS = 2
WARMUP_SECONDS = 8.0  # traffic flows through both workers before the first kill
MIN_UP_SECONDS = 3.0  # a restarted worker's time to start rejoining before the next kill
TAIL_SECONDS = 5.0  # no kill in the last seconds of traffic
LEADS = 400  # fewer leads than the full run: ~10 events each, so more records decide a stage


@dataclass(frozen=True)
class Kill:
    at_s: float  # seconds after the traffic started
    worker: int  # worker slot, 1-based
    gap_s: float  # restart this long after the kill


def kill_schedule(seed: int, kills: int, traffic_s: float, gap_s: float,
                  workers: int = WORKERS) -> list[Kill]:
    """`kills` SIGKILLs of the workers in turn at random points of [warm-up, end - tail]:
    the slack left after each kill's gap and minimum uptime is split at random between them."""
    window = traffic_s - WARMUP_SECONDS - TAIL_SECONDS
    slack = window - kills * (gap_s + MIN_UP_SECONDS)
    if kills < 0 or slack < 0:
        raise ValueError(f"{kills} kills with a {gap_s:g} s gap do not fit in {traffic_s:g} s"
                         " of traffic: fewer kills, a shorter gap or more traffic")
    rng = random.Random(seed)
    weights = [rng.random() for _ in range(kills + 1)]
    total = sum(weights) or 1.0
    out: list[Kill] = []
    at = WARMUP_SECONDS
    for i in range(kills):
        at += slack * weights[i] / total
        out.append(Kill(round(at, 2), i % workers + 1, gap_s))
        at += gap_s + MIN_UP_SECONDS
    return out


@dataclass
class RunOutcome:
    seed: int
    sent: int = 0
    violations: int = 0
    lost: list[Lost] = field(default_factory=list)
    caught_up: bool = True
    seconds: float = 0.0
    workdir: Path = Path()
    unreached: int | None = None  # with --trace: input records that never reached the agent

    @property
    def lost_leads(self) -> int:
        return len({entry.lead for entry in self.lost})


@dataclass(frozen=True)
class LossRate:
    runs: int
    lossy_runs: int  # runs with at least one lost output
    lost_outputs: int
    lost_leads: int
    violating_runs: int  # runs with any violation (lost or not)

    @property
    def rate(self) -> float:
        return self.lossy_runs / self.runs if self.runs else 0.0

    def render(self) -> str:
        return (f"loss rate: {self.lossy_runs}/{self.runs} runs lost output"
                f" ({self.rate:.0%}); {self.lost_outputs} lost outputs in total, of"
                f" {self.lost_leads} leads; {self.violating_runs}/{self.runs} runs with"
                " violations")


def loss_rate(outcomes: list[RunOutcome]) -> LossRate:
    return LossRate(
        runs=len(outcomes),
        lossy_runs=sum(1 for o in outcomes if o.lost),
        lost_outputs=sum(len(o.lost) for o in outcomes),
        lost_leads=sum(o.lost_leads for o in outcomes),
        violating_runs=sum(1 for o in outcomes if o.violations),
    )


async def kill_loop_run(broker: Broker, workdir: Path, seed: int, *, kills: int, gap_s: float,
                        traffic_s: float, rate: float, trace: bool, strict: bool,
                        log: Log, worker_src: Path | None = None
                        ) -> tuple[RunOutcome, ChaosRun]:
    """One run: two workers, steady traffic, the seed's kill schedule, then the verifier."""
    schedule = kill_schedule(seed, kills, traffic_s, gap_s)
    run = ChaosRun(workdir, rate, seed=seed, leads=LEADS, trace=trace,
                   replication_factor=getattr(broker, "replication_factor", 1),
                   worker_src=worker_src)
    stamp = stamper(log)
    started = time.monotonic()
    workers: dict[int, WorkerProcess] = {}
    try:
        for n in range(1, WORKERS + 1):
            workers[n] = run.worker(broker.url, n).start()
        await asyncio.gather(*(asyncio.to_thread(w.wait_ready, 120) for w in workers.values()))
        stamp(f"seed {seed}: {WORKERS} workers ready; kills at "
              + ", ".join(f"{k.at_s:.1f} s (w{k.worker})" for k in schedule))
        stop = asyncio.Event()
        traffic_task = asyncio.create_task(traffic(run, broker, stop))
        t0 = time.monotonic()
        for kill in schedule:
            await asyncio.sleep(max(0.0, t0 + kill.at_s - time.monotonic()))
            workers[kill.worker].kill()
            stamp(f"SIGKILL worker {kill.worker}")
            await asyncio.sleep(kill.gap_s)
            workers[kill.worker] = run.worker(broker.url, kill.worker).start()
        await asyncio.sleep(max(0.0, t0 + traffic_s - time.monotonic()))
        stop.set()
        await traffic_task
        stamp(f"traffic stopped after {run.sent} events")
        report = await settle_and_verify(run, broker, stamp, catch_up_s=60, settle_s=20,
                                         strict=strict)
        (workdir / "verify.txt").write_text(report.render() + "\n" + run.forensics + "\n")
        outcome = RunOutcome(seed, run.sent, len(report.violations), list(report.lost),
                             run.caught_up, time.monotonic() - started, workdir,
                             run.unreached)
        return outcome, run
    finally:
        for w in workers.values():
            w.stop()


def replay_command(seed: int, kills: int, gap_s: float, traffic_s: float, kind: str,
                   trace: bool = False, worker_src: Path | None = None) -> str:
    return (f"leadrouter chaos --kill-loop --seed {seed} --kills {kills} --gap {gap_s:g}"
            f" --traffic-seconds {traffic_s:g} --kind {kind}" + (" --trace" if trace else "")
            + (f" --worker-src {worker_src}" if worker_src else ""))


async def run_kill_loop(*, repeat: int, seed: int, kills: int, gap_s: float, traffic_s: float,
                        rate: float, kind: str, trace: bool, strict: bool, root: Path,
                        log: Log = print, worker_src: Path | None = None
                        ) -> list[RunOutcome]:
    """`repeat` runs on one local broker; run i uses seed + i."""
    kill_schedule(seed, kills, traffic_s, gap_s)  # refuse an impossible schedule up front
    root.mkdir(parents=True, exist_ok=True)
    broker = local_broker(kind, port=free_port(), log_path=root / "broker.log")
    outcomes: list[RunOutcome] = []
    await asyncio.to_thread(broker.start)
    try:
        for i in range(repeat):
            run_seed = seed + i
            log(f"--- run {i + 1}/{repeat}, seed {run_seed}")
            outcome, run = await kill_loop_run(
                broker, root / f"run-{i + 1}-seed-{run_seed}", run_seed, kills=kills,
                gap_s=gap_s, traffic_s=traffic_s, rate=rate, trace=trace, strict=strict,
                log=log, worker_src=worker_src)
            outcomes.append(outcome)
            log(f"run {i + 1}: seed {run_seed}, {outcome.sent} events,"
                f" {outcome.violations} violations, {len(outcome.lost)} lost outputs of"
                f" {outcome.lost_leads} leads, {outcome.seconds:.0f} s"
                + ("" if outcome.unreached is None
                   else f"; {outcome.unreached} input records never reached the agent"))
            for entry in outcome.lost:
                log(f"  lost: {entry.lead}: {entry.expected} ({entry.detail})")
            if run.forensics:
                log(run.forensics)
    finally:
        broker.resume()
        await asyncio.to_thread(broker.stop)
    return outcomes


def main(*, repeat: int, seed: int | None, kills: int, gap_s: float, traffic_s: float,
         rate: float, kind: str | None, trace: bool, strict: bool,
         worker_src: Path | None = None) -> int:
    kind = kind or default_kind()
    seed = seed if seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    root = Path(".leadrouter") / f"kill-loop-{int(time.time())}"
    print(f"kill loop on {kind}: {repeat} run(s), {kills} kills each, gap {gap_s:g} s,"
          f" {traffic_s:g} s of traffic at {rate:g} ev/s, seeds {seed}..{seed + repeat - 1}"
          + (f"; workers from {worker_src}" if worker_src else ""))
    outcomes = asyncio.run(run_kill_loop(repeat=repeat, seed=seed, kills=kills, gap_s=gap_s,
                                         traffic_s=traffic_s, rate=rate, kind=kind,
                                         trace=trace, strict=strict, root=root,
                                         worker_src=worker_src))
    summary = loss_rate(outcomes)
    print(summary.render())
    for o in outcomes:
        if o.lost or o.violations:
            command = replay_command(o.seed, kills, gap_s, traffic_s, kind, trace, worker_src)
            print(f"  replay seed {o.seed}: {command}  (logs {o.workdir})")
    print(orjson.dumps({"kill_loop": {
        "kind": kind, "seeds": [o.seed for o in outcomes], "kills": kills, "gap_s": gap_s,
        "traffic_s": traffic_s, "runs": summary.runs, "lossy_runs": summary.lossy_runs,
        "lost_outputs": summary.lost_outputs, "lost_leads": summary.lost_leads,
        "violating_runs": summary.violating_runs,
        "per_run": [{"seed": o.seed, "sent": o.sent, "violations": o.violations,
                     "lost": len(o.lost), "caught_up": o.caught_up,
                     "unreached_records": o.unreached,
                     "seconds": round(o.seconds)} for o in outcomes],
    }}).decode())
    print(f"logs: {root}")
    return 1 if summary.lossy_runs or summary.violating_runs else 0
