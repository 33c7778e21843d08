"""`leadrouter chaos` (`make chaos`): worker and broker faults under steady traffic, then the
verifier.

8 partitions, 2-3 workers, realistic traffic (leads, profiles, reps answering their leads):

  short (in `make test`): one Kafka node (or Tansu); SIGKILL a worker and restart it; add a
                          worker (rebalance)
  full (`make chaos`):    on Apache Kafka, three KRaft nodes (topics with replication factor 3,
                          acks=all, min.insync.replicas=2): a worker started before the broker;
                          the two above; remove a worker gracefully; SIGKILL the broker leading
                          the most input partitions, restart it; SIGSTOP the active controller
                          for 20 s. On Tansu (one node, `--kind tansu`) the broker faults are
                          replaced by a 20 s pause of the whole broker.

After each fault a probe lead (fit VP, demo request) is sent: the time from the fault until its
`lead.sql` and `lead.assigned` are readable is the time to resume.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from router.harness.brokers import KafkaBroker, default_kind, free_port, local_broker
from router.harness.chaos.faults import (
    BrokerFaultError,
    active_controller,
    busiest_leader,
    partition_leaders,
)
from router.harness.chaos.session import (
    Broker,
    ChaosRun,
    FaultResult,
    Log,
    fmt_seconds,
    longest_stall,
    probe,
    settle_and_verify,
    stamper,
    traffic,
    wait_for_probes,
)
from router.harness.workers import WorkerProcess
from router.tools.verify import Report

PAUSE_SECONDS = 20.0
SETTLE_SECONDS = 60.0


async def run_chaos(full: bool, workdir: Path, rate: float = 60.0, kind: str | None = None,
                    log: Log = print, trace: bool = False, strict: bool = False,
                    worker_src: Path | None = None) -> tuple[Report, ChaosRun]:
    kind = kind or default_kind()
    nodes = 3 if full and kind == "kafka" else 1
    broker = local_broker(kind, port=free_port(), nodes=nodes,
                          log_path=workdir / "broker.log")
    run = ChaosRun(workdir, rate, replication_factor=min(nodes, 3), trace=trace,
                   worker_src=worker_src)
    workers: list[WorkerProcess] = []
    stamp = stamper(log)
    try:
        if isinstance(broker, KafkaBroker):
            broker.plan()  # the URL is known before the broker runs
        first = run.worker(broker.url, 1)
        if full:
            first.start()
            stamp("worker 1 started before the broker is up")
            await asyncio.sleep(3)
            await asyncio.to_thread(broker.start)
            stamp(f"broker started ({nodes} node{'s' if nodes > 1 else ''})")
        else:
            await asyncio.to_thread(broker.start)
            first.start()
        workers.append(first)
        await asyncio.to_thread(first.wait_ready, 120)
        stamp("worker 1 ready")
        second = run.worker(broker.url, 2).start()
        workers.append(second)
        await asyncio.to_thread(second.wait_ready, 120)
        stamp("worker 2 ready")

        stop = asyncio.Event()
        traffic_task = asyncio.create_task(traffic(run, broker, stop))

        async def fault(name: str, action: Callable[[], Awaitable[str | None]]) -> None:
            result = FaultResult(name, time.monotonic())
            stamp(f"fault: {name}")
            detail = await action()
            if detail is not None:
                result.fault = f"{name}: {detail}"
                stamp(f"  {detail}")
            run.faults.append(result)
            await probe(run, broker, result)

        async def kill_and_restart() -> None:
            workers[1].kill()
            await asyncio.sleep(2)
            workers[1] = run.worker(broker.url, 2).start()

        async def add_worker() -> None:
            workers.append(run.worker(broker.url, 3).start())

        async def remove_gracefully() -> None:
            await asyncio.to_thread(workers.pop().stop)

        await asyncio.sleep(10)
        await fault("SIGKILL worker 2, restart it 2 s later", _none(kill_and_restart))
        await asyncio.sleep(20)
        await fault("add worker 3 (rebalance)", _none(add_worker))
        await asyncio.sleep(20)
        if full:
            await fault("remove worker 3 gracefully (SIGTERM)", _none(remove_gracefully))
            await asyncio.sleep(20)
            if isinstance(broker, KafkaBroker):
                await broker_faults(run, broker, fault)
            else:
                await fault(f"pause the broker {PAUSE_SECONDS:.0f} s (SIGSTOP/SIGCONT)",
                            _none(lambda: _pause_all(broker)))
                await asyncio.sleep(20)
        await wait_for_probes(run)
        stop.set()
        await traffic_task
        stamp(f"traffic stopped after {run.sent} events; waiting for the workers to catch up")
        report = await settle_and_verify(run, broker, stamp, catch_up_s=180,
                                         settle_s=SETTLE_SECONDS, strict=strict)
        return report, run
    finally:
        for w in workers:
            w.stop()
        broker.resume()
        broker.stop()


FaultStep = Callable[[str, Callable[[], Awaitable[str | None]]], Awaitable[None]]


async def broker_faults(run: ChaosRun, broker: KafkaBroker, fault: FaultStep) -> None:
    """SIGKILL the busiest input-partition leader (probe while it is down), restart it; then
    SIGSTOP the active controller for 20 s (probe while it is stopped), SIGCONT."""
    topics = run.topics
    inputs = [topics.touchpoints, topics.profiles, topics.activity, topics.routing]
    victim: list[int] = []

    async def kill_leader() -> str:
        leaders = await partition_leaders(broker.bootstrap, inputs)
        node, count = busiest_leader(leaders)
        victim.append(node)
        await asyncio.to_thread(broker.kill_node, broker.node(node))
        return f"node {node} (leader of {count} of {len(leaders)} input partitions)"

    async def restart() -> str:
        started = time.monotonic()
        await asyncio.to_thread(broker.restart_node, broker.node(victim[0]))
        return f"node {victim[0]} back after {time.monotonic() - started:.1f} s"

    paused: list[int] = []

    async def pause_controller() -> str:
        node, epoch = await active_controller(broker.bootstrap)
        broker.pause(broker.node(node))
        paused.append(node)
        return f"node {node} (quorum leader, epoch {epoch})"

    try:
        await fault("SIGKILL the busiest input-partition leader", kill_leader)
        await asyncio.sleep(15)
        await fault("restart the killed broker", restart)
        await asyncio.sleep(20)
        started = time.monotonic()
        await fault(f"SIGSTOP the active controller {PAUSE_SECONDS:.0f} s", pause_controller)
        await asyncio.sleep(max(0.0, PAUSE_SECONDS - (time.monotonic() - started)))
    except BrokerFaultError as exc:
        run.faults.append(FaultResult(f"broker fault skipped: {exc}", time.monotonic(), 0, 0))
    finally:
        for node in paused:
            broker.resume(broker.node(node))
    await asyncio.sleep(20)


async def _pause_all(broker: Broker) -> None:
    broker.pause()
    await asyncio.sleep(PAUSE_SECONDS)
    broker.resume()


def _none(action: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[str | None]]:
    async def wrapped() -> str | None:
        await action()
        return None

    return wrapped


def main(full: bool, rate: float, kind: str | None = None, trace: bool = False,
         strict: bool = False, worker_src: Path | None = None) -> int:
    workdir = Path(".leadrouter") / f"chaos-{int(time.time())}"
    report, run = asyncio.run(run_chaos(full, workdir, rate, kind, trace=trace, strict=strict,
                                        worker_src=worker_src))
    print(report.render())
    print(f"events sent: {run.sent} ({run.send_failures} given up by the producer during"
          f" broker faults: not inputs); longest gap between outputs:"
          f" {longest_stall(run.output_times):.1f} s; verifier settled after"
          f" {run.settled_after_s:.0f} s")
    for f in run.faults:
        print(f"  {f.fault}: resumed (probe lead.sql) after"
              f" {fmt_seconds(f.resume_sql_s)}, lead.assigned after"
              f" {fmt_seconds(f.resume_assigned_s)}")
    if run.forensics:
        print(run.forensics)
    print(orjson.dumps({"chaos": {
        "full": full, "sent": run.sent, "send_failures": run.send_failures,
        "violations": len(report.violations),
        "lost": len(report.lost), "repeats_dropped": dict(report.repeats),
        "longest_stall_s": round(longest_stall(run.output_times), 1),
        "verify_settled_after_s": run.settled_after_s,
        "faults": [{"fault": f.fault, "resume_sql_s": f.resume_sql_s,
                    "resume_assigned_s": f.resume_assigned_s} for f in run.faults],
    }}).decode())
    print(f"logs: {workdir}")
    return 1 if report.violations or any(f.resume_assigned_s is None for f in run.faults) else 0
