"""The partition processor's qualification throughput, exactly-once against at-least-once,
on a running broker (one worker process per guarantee, the same mix, one after the other).

    leadrouter broker --port 19092 &
    LEADROUTER_BROKER=kafka://127.0.0.1:19092 python -m router.harness.bench.pipeline \
        --leads 20000 --touchpoints 200000

Measured like `leadrouter bench` measures the router (router.harness.bench.phases): the
worker starts on empty topics with the roster and named accounts, the profiles are loaded and
processed first (set-up), then the touchpoints are produced as fast as the producer goes and
the rate is read from the offsets the worker's group commits, between the 10 % and the 90 %
marks; then faust's floor on the first run's touchpoints. Extra worker settings come from
the environment (LEADROUTER_BATCH_SIZE...). A measurement, not a test: it prints figures and
one JSON line, and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from router.adapters.topics import Topics, ensure_topics
from router.harness.bench.load import Mix, build_mix, produce
from router.harness.bench.measure import cpu_seconds, rss_mb, sample_commits, throughput
from router.harness.workers import WorkerProcess
from router.settings import Settings, bootstrap_servers, from_env

GUARANTEES = ("exactly_once", "at_least_once")


async def measure(settings: Settings, mix: Mix, guarantee: str, workdir: Path, run: str,
                  timeout: float) -> dict[str, Any]:
    prefix = f"{run}.{guarantee}."
    topics = Topics.with_prefix(prefix)
    s = Settings(**{**settings.__dict__, "topic_prefix": prefix})
    bootstrap, client = bootstrap_servers(s.broker), s.kafka_client_kwargs()
    await ensure_topics(s, topics)
    await produce(bootstrap, topics.reps, mix.reps, client)
    await produce(bootstrap, topics.accounts, mix.accounts, client)
    worker = WorkerProcess(s.broker, workdir / f"{run}-{guarantee}.log", env={
        "LEADROUTER_TOPIC_PREFIX": prefix, "LEADROUTER_RULES": "",
        "LEADROUTER_PROCESSING_GUARANTEE": guarantee,
        "LEADROUTER_DATA_DIR": str(workdir / f"{run}-{guarantee}-data")}).start()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client)
    await admin.start()
    try:
        await asyncio.to_thread(worker.wait_ready, 180)

        def alive() -> None:
            if worker.process is None or worker.process.poll() is not None:
                raise RuntimeError(f"worker exited; see {worker.log_path}")

        parts = [TopicPartition(topics.profiles, p) for p in range(s.partitions)]
        await produce(bootstrap, topics.profiles, mix.profiles, client)
        await sample_commits(admin, s.app_id, parts, len(mix.profiles), timeout, alive, 0.5)
        total = len(mix.touchpoints)
        parts = [TopicPartition(topics.touchpoints, p) for p in range(s.partitions)]
        sampler = asyncio.create_task(
            sample_commits(admin, s.app_id, parts, total, timeout, alive))
        await produce(bootstrap, topics.touchpoints, mix.touchpoints, client)
        loaded = time.monotonic()
        pid = worker.process.pid if worker.process else None
        cpu = cpu_seconds([pid])
        samples = await sampler
        wall = time.monotonic() - loaded
        rate = throughput(samples, 0.1 * total, 0.9 * total, loaded)
        return {"guarantee": guarantee, "touchpoints_per_s": round(rate),
                "worker_cores": round((cpu_seconds([pid]) - cpu) / wall, 2),
                "peak_rss_mb": round(rss_mb(pid), 1), "worker_log": str(worker.log_path)}
    finally:
        await admin.close()
        worker.stop()


async def floor(settings: Settings, topic: str, total: int, workdir: Path, run: str,
                timeout: float) -> float:
    """faust's floor (router.harness.bench.floor, take_events) on the same touchpoints, in the
    same run: what the issue's "x the floor" targets divide by."""
    app_id = f"{run}.floor"
    log_path = workdir / f"{run}-floor.log"
    env = {**os.environ, "LEADROUTER_DATA_DIR": str(workdir / f"{run}-floor-data"),
           "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router.harness.bench.floor", "--topic", topic,
             "--app-id", app_id, "--mode", "take"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    bootstrap = bootstrap_servers(settings.broker)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **settings.kafka_client_kwargs())
    await admin.start()

    def alive() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"the floor exited; see {log_path}")

    try:
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        samples = await sample_commits(admin, app_id, parts, total, timeout, alive)
    finally:
        await admin.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    return throughput(samples, 0.1 * total, 0.9 * total)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    settings = from_env()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run = f"pl{uuid.uuid4().hex[:6]}"
    mix = build_mix(args.leads, args.touchpoints, datetime.now(UTC))
    results = [await measure(settings, mix, g, workdir, run, args.timeout)
               for g in args.guarantees.split(",")]
    out: dict[str, Any] = {"run": run, "leads": args.leads, "touchpoints": args.touchpoints,
                           "batch_size": settings.batch_size, "results": results}
    rates = {r["guarantee"]: r["touchpoints_per_s"] for r in results}
    if args.floor:
        first = Topics.with_prefix(f"{run}.{results[0]['guarantee']}.").touchpoints
        rate = await floor(settings, first, args.touchpoints, workdir, run, args.timeout)
        out["faust_floor_per_s"] = round(rate)
        for r in results:
            r["x_floor"] = round(r["touchpoints_per_s"] / rate, 2)
    if set(rates) == set(GUARANTEES) and rates["at_least_once"]:
        out["exactly_once_cost"] = round(1 - rates["exactly_once"] / rates["at_least_once"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.harness.bench.pipeline",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--touchpoints", type=int, default=200_000)
    parser.add_argument("--guarantees", default=",".join(GUARANTEES))
    parser.add_argument("--workdir", default=".leadrouter/bench-pipeline")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip faust's floor on the same touchpoints")
    args = parser.parse_args(argv)
    result = asyncio.run(main_async(args))
    for r in result["results"]:
        print(f"{r['guarantee']:>14}: {r['touchpoints_per_s']:>7,} touchpoints/s,"
              f" {r['worker_cores']} cores, peak RSS {r['peak_rss_mb']} MB"
              + (f", {r['x_floor']} x the faust floor" if "x_floor" in r else ""))
    if "faust_floor_per_s" in result:
        print(f"   faust floor: {result['faust_floor_per_s']:>7,} events/s (take_events)")
    if "exactly_once_cost" in result:
        print(f"exactly-once cost: {result['exactly_once_cost']:.1%} of at-least-once")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
