"""The bench's phases: the router against faust's floor and raw aiokafka, in one run.

Same machine, same broker, same event mix (200-400-byte touchpoints over `leads` distinct leads,
each with a profile; a 50-rep roster, 10 reps in each of the rules' 5 pools, with room for every
lead so nothing queues), 8 partitions. Every phase has its own topic prefix, so no phase sees
another's records. A benchmark, not a test: the targets are printed next to the figures, never
asserted.

  1. router, 1 worker (prefix `<run>.r1.`): the worker starts on empty topics with the roster,
     named accounts and profiles loaded (profiles are set-up, not measured); then the
     touchpoints are loaded as fast as the producer goes. Throughput = touchpoints/s from the
     offsets the worker's consumer group commits, between the warm-up mark (10 % of the
     touchpoints, and not before the load finished) and the 90 % mark: both ends are
     mid-stream commits, so neither start-up nor the last commit interval is counted.
  2. state: the worker is SIGKILLed and the lead-state changelog read back, the newest record
     per key summed (key + value bytes): what a compacted changelog (and a restore) holds per
     active lead.
  3. raw: a plain aiokafka consumer group passes phase 1's touchpoints through to an output
     topic (getmany, send, wait for the acks, commit each second, like faust's 1 s interval);
     counted in process.
  4. faust floor: `python -m router.harness.bench.floor`: a faust agent on phase 1's touchpoints
     with the worker's settings, once with `take_events` and once with `async for`, measured
     from committed offsets like the router; the faster is the floor.
  5. restore: once the killed worker's session has expired (so the new worker's join does not
     wait for the dead member), a new worker is started and timed to /ready (the memory store
     replays the whole changelog); scaled to 100k leads.
  6. latency, on the restored worker: the same mix offered at half the one-worker maximum,
     with probe leads among it (a fit decision maker whose one demo request makes it SQL at
     once) timed from before `send()` to their `lead.sql` and `lead.assigned` being read by a
     plain consumer (as `leadrouter bench-latency` does).
  7. router, 2 workers (prefix `<run>.r2.`), as phase 1.

Peak RSS is VmHWM of each worker process. Every process the bench starts (broker, workers,
floors) is killed on the way out, also on an error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from router.adapters.topics import Topics, ensure_topics
from router.harness.bench.load import (
    Mix,
    build_mix,
    probe_profiles,
    probe_routes,
    probe_touchpoint,
    produce,
)
from router.harness.bench.measure import (
    _log,
    committed_total,
    cpu_seconds,
    loop_lag,
    percentile,
    ratio,
    read_state_size,
    rss_mb,
    sample_commits,
    throughput,
)
from router.harness.bench.report import add_ratios
from router.harness.workers import WorkerProcess
from router.service.partitioning import murmur2_partition
from router.settings import Settings, bootstrap_servers, from_env
from router.tools.history import read_topic


@dataclass(frozen=True)
class BenchConfig:
    leads: int = 100_000
    touchpoints: int = 200_000
    partitions: int = 8
    latency_seconds: float = 30.0
    max_probe_rate: float = 20.0
    phase_timeout: float = 150.0  # most seconds one throughput phase may take
    floor_modes: tuple[str, ...] = ("take", "iter")
    mode: str = "full"
    direct: bool = True  # also measure the batched-ingestion prototype (bench/direct.py)
    routing_probes: int = 50_000  # SQLs put on the routing partition at once to time it


QUICK = BenchConfig(leads=5_000, touchpoints=20_000, latency_seconds=6.0, max_probe_rate=20.0,
                    phase_timeout=40.0, mode="quick", routing_probes=10_000)
WARMUP_FRACTION = 0.1
END_FRACTION = 0.9


@dataclass
class Processes:
    """Everything the bench started; `close()` kills what is still running."""

    workers: list[WorkerProcess] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.kill()
        for proc in self.others:
            _kill_group(proc)
        self.workers.clear()
        self.others.clear()

    def check(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is not None:
                raise RuntimeError(f"worker exited; see {worker.log_path}:\n{worker.log_tail()}")
        for proc in self.others:
            if proc.poll() is not None:
                raise RuntimeError(f"process {proc.pid} ({proc.args!r}) exited with"
                                   f" {proc.returncode}")


async def count_sqls(bootstrap: list[str], topic: str, client: dict[str, Any],
                     before: float | None = None) -> int:
    """lead.sql records on `topic` (read_committed: what downstream sees), only those written
    before `before` (epoch s) when given: a later phase's SQLs are not phase 1's."""
    records = await read_topic(bootstrap, topic, isolation_level="read_committed",
                               client=client)
    return sum(1 for r in records if r.value and b'"lead.sql"' in r.value
               and (before is None or r.timestamp < before))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(10)


@dataclass
class Bench:
    config: BenchConfig
    broker_url: str
    workdir: Path
    procs: Processes
    run: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:6]}")
    broker_pids: list[int] = field(default_factory=list)  # the local broker's, for its CPU
    broker_kind: str = "kafka"
    r1_ended_at: float | None = None  # epoch s phase 1's worker was killed: its outputs are older
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def bootstrap(self) -> list[str]:
        return bootstrap_servers(self.broker_url)

    def settings(self, prefix: str) -> Settings:
        return replace(from_env(), broker=self.broker_url, topic_prefix=prefix,
                       partitions=self.config.partitions, broker_wait_seconds=30.0)

    @property
    def client(self) -> dict[str, Any]:
        return self.settings("").kafka_client_kwargs()

    def worker(self, prefix: str, name: str, data: str | None = None,
               env: dict[str, str] | None = None) -> WorkerProcess:
        """A worker process (registered for cleanup); `data` names its data dir (a restarted
        worker reuses the crashed one's, as a RocksDB store needs)."""
        data_dir = self.workdir / self.run / f"data-{data or name}"
        data_dir.mkdir(parents=True, exist_ok=True)
        worker = WorkerProcess(self.broker_url, self.workdir / f"{name}.log", env={
            "LEADROUTER_TOPIC_PREFIX": prefix,
            "LEADROUTER_RULES": "",
            "LEADROUTER_PARTITIONS": str(self.config.partitions),
            "LEADROUTER_DATA_DIR": str(data_dir),
            "LEADROUTER_BROKER_WAIT_SECONDS": "30",
            **(env or {}),
        })
        self.procs.workers.append(worker)
        worker.start()
        pid = worker.process.pid if worker.process else None
        _log(f"{name}: worker started (pid {pid}, log {worker.log_path})")
        return worker

    def tps(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for p in range(self.config.partitions)]

    async def admin(self) -> AIOKafkaAdminClient:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000,
                                    **self.client)
        await admin.start()
        return admin

    # ---------------------------------------------------------------- router phases

    async def router_phase(self, mix: Mix, name: str, workers: int,
                           env: dict[str, str] | None = None, misplaced: bool = False
                           ) -> tuple[float, list[WorkerProcess], Topics]:
        """Start `workers` on empty topics, load the set-up, then time the touchpoints.
        `misplaced`: every touchpoint is produced off its murmur2 partition (as another
        producer's partitioner may put it), so each one is forwarded to its lead's partition
        first; the rate then counts touchpoints applied there (the repartition topic's
        commits)."""
        prefix = f"{self.run}.{name}."
        topics = Topics.with_prefix(prefix)
        await ensure_topics(self.settings(prefix), topics)
        await produce(self.bootstrap, topics.reps, mix.reps, self.client)
        await produce(self.bootstrap, topics.accounts, mix.accounts, self.client)
        started = time.monotonic()
        procs = [self.worker(prefix, f"{name}-worker{i + 1}", env=env) for i in range(workers)]
        await asyncio.gather(*(asyncio.to_thread(w.wait_ready, 180) for w in procs))
        if workers == 1:
            self.result["cold_start_seconds"] = round(time.monotonic() - started, 2)
        _log(f"{name}: {workers} worker(s) ready after {time.monotonic() - started:.1f} s;"
             f" loading {len(mix.profiles):,} profiles")
        group = self.settings(prefix).app_id
        admin = await self.admin()
        try:
            await produce(self.bootstrap, topics.profiles, mix.profiles, self.client)
            samples = await sample_commits(admin, group, self.tps(topics.profiles),
                                           len(mix.profiles), self.config.phase_timeout * 2,
                                           self.procs.check, interval=0.5)
            if samples[-1][1] < len(mix.profiles):
                raise RuntimeError(f"{name}: profiles not all processed in time")
            await asyncio.gather(*(asyncio.to_thread(w.wait_ready, 120) for w in procs))
            _log(f"{name}: profiles processed; loading {len(mix.touchpoints):,} touchpoints")
            total = len(mix.touchpoints)
            applied = topics.repartition_touchpoints if misplaced else topics.touchpoints
            sampler = asyncio.create_task(sample_commits(
                admin, group, self.tps(applied), total, self.config.phase_timeout,
                self.procs.check))
            partitions = self.config.partitions
            try:
                load_seconds = await produce(
                    self.bootstrap, topics.touchpoints, mix.touchpoints, self.client,
                    partition_of=(lambda key: (murmur2_partition(key, partitions) + 1)
                                  % partitions) if misplaced else None)
            except BaseException:
                sampler.cancel()
                raise
            loaded = time.monotonic()
            worker_pids = [w.process.pid if w.process else None for w in procs]
            cpu = (cpu_seconds(worker_pids), cpu_seconds(self.broker_pids))
            samples = await sampler
            wall = time.monotonic() - loaded
            cores = ((cpu_seconds(worker_pids) - cpu[0]) / wall,
                     (cpu_seconds(self.broker_pids) - cpu[1]) / wall)
        finally:
            await admin.close()
        rate = throughput(samples, WARMUP_FRACTION * total, END_FRACTION * total, loaded)
        # CPU use after the load: where the time goes on a small machine (not a target)
        self.result[f"{name}_worker_cpu_cores"] = round(cores[0], 2)
        if self.broker_pids:
            self.result[f"{name}_broker_cpu_cores"] = round(cores[1], 2)
        _log(f"{name}: {rate:,.0f} touchpoints/s ({workers} worker(s); load took"
             f" {load_seconds:.1f} s, {samples[-1][1]:,}/{total:,} committed; CPU after the"
             f" load: workers {cores[0]:.2f} cores, broker {cores[1]:.2f} cores)")
        return rate, procs, topics

    async def crash_and_state(self, worker: WorkerProcess, prefix: str) -> float:
        """SIGKILL the worker (after reading its peak RSS) and size its state changelog;
        returns the moment of the kill."""
        pid = worker.process.pid if worker.process else None
        rss, rss_now = rss_mb(pid), rss_mb(pid, "VmRSS")
        worker.kill()
        killed = time.monotonic()
        self.r1_ended_at = time.time()
        self.result["worker_peak_rss_mb"] = round(rss, 1)
        self.result["worker_rss_at_end_mb"] = round(rss_now, 1)
        _log(f"r1: worker SIGKILLed (peak RSS {rss:.0f} MB, {rss_now:.0f} MB at the end);"
             " reading the state changelog")
        changelog = f"{self.settings(prefix).app_id}-lead-state-changelog"
        keys, size, records = await read_state_size(self.bootstrap, changelog,
                                                    self.config.partitions, self.client)
        self.result.update(
            state_leads=keys, state_bytes=size, changelog_records=records,
            state_bytes_per_lead=round(ratio(size, keys), 1),
            state_mb_per_100k_leads=round(ratio(size, keys) * 100_000 / 1e6, 2),
        )
        _log(f"r1: state {keys:,} leads, {size / 1e6:.1f} MB, {records:,} changelog records"
             f" (read in {time.monotonic() - killed:.1f} s)")
        return killed

    async def restore(self, prefix: str, killed: float) -> WorkerProcess:
        """A new worker after the crash, timed from its start to /ready."""
        # the broker drops the dead member only once its session has expired; a worker that
        # joined before would wait for that (and Tansu's DescribeGroups never stops listing it)
        session = self.settings(prefix).session_timeout_seconds
        await asyncio.sleep(max(0.0, killed + session + 2.0 - time.monotonic()))
        started = time.monotonic()
        restored = self.worker(prefix, "r1-restored", data="r1-worker1")
        await asyncio.to_thread(restored.wait_ready, 300)
        seconds = time.monotonic() - started
        keys = self.result["state_leads"]
        self.result.update(
            restore_seconds=round(seconds, 2),
            restore_s_per_100k_leads=round(seconds * 100_000 / max(1, keys), 2),
        )
        _log(f"r1: restored worker ready after {seconds:.1f} s ({keys:,} leads,"
             f" {self.result['changelog_records']:,} changelog records)")
        return restored

    # ---------------------------------------------------------------- latency

    async def latency(self, mix: Mix, prefix: str, offered: float) -> None:
        topics = Topics.with_prefix(prefix)
        cfg = self.config
        probe_rate = min(cfg.max_probe_rate, offered / 10)
        probes = max(10, int(probe_rate * cfg.latency_seconds))
        background = max(0, int((offered - probe_rate) * cfg.latency_seconds))
        now = datetime.now(UTC)
        profiles = probe_profiles(self.run, probes, now)
        load = mix.more_touchpoints(background, now)
        await produce(self.bootstrap, topics.profiles, profiles, self.client)
        # read_committed: what a downstream consumer of an exactly-once worker must set, so
        # the latency includes the transaction commit (SPEC's outputs as downstream sees them)
        consumer = AIOKafkaConsumer(topics.transitions, topics.assignments,
                                    bootstrap_servers=self.bootstrap,
                                    auto_offset_reset="latest", fetch_max_wait_ms=100,
                                    isolation_level="read_committed", **self.client)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5,
                                    **self.client)
        prober = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0, **self.client)
        await consumer.start()
        await producer.start()
        await prober.start()
        sent_at: dict[bytes, float] = {}
        lat: dict[str, list[float]] = {"sql": [], "assigned": []}
        lag_ms: list[float] = []
        queued = 0
        try:
            admin = await self.admin()
            try:  # the probes' profiles are folded in before any timing starts
                await sample_commits(admin, self.settings(prefix).app_id,
                                     self.tps(topics.profiles), len(mix.profiles) + probes, 60,
                                     self.procs.check, interval=0.2)
            finally:
                await admin.close()
            while not consumer.assignment():
                await asyncio.sleep(0.05)
            for tp in consumer.assignment():
                await consumer.position(tp)
            started = time.monotonic()
            duration = cfg.latency_seconds

            send_end = started

            async def send_background() -> None:
                nonlocal send_end
                sent = 0
                while sent < len(load):
                    due = min(len(load), int((time.monotonic() - started) * len(load)
                                             / duration))
                    for key, value in load[sent:due]:
                        await producer.send(topics.touchpoints, value, key=key)
                    sent = max(sent, due)
                    await asyncio.sleep(0.01)
                send_end = time.monotonic()
                await producer.flush()

            async def send_probes() -> None:
                for i, (key, _) in enumerate(profiles):
                    await asyncio.sleep(max(0.0, started + i * duration / probes
                                            - time.monotonic()))
                    value = probe_touchpoint(key, datetime.now(UTC))
                    sent_at[key] = time.monotonic()
                    await prober.send(topics.touchpoints, value, key=key)

            async def consume() -> None:
                nonlocal queued
                deadline = started + duration + 30
                while len(lat["assigned"]) + queued < probes and time.monotonic() < deadline:
                    batches = await consumer.getmany(timeout_ms=200)
                    received = time.monotonic()
                    for records in batches.values():
                        for r in records:
                            start = sent_at.get(r.key or b"")
                            if start is None or r.value is None:
                                continue
                            if b'"lead.sql"' in r.value:
                                lat["sql"].append(received - start)
                            elif b'"lead.assigned"' in r.value:
                                lat["assigned"].append(received - start)
                            elif b'"lead.queued"' in r.value:
                                queued += 1

            lag = asyncio.create_task(loop_lag(lag_ms, started + duration))
            await asyncio.gather(send_background(), send_probes(), consume())
            lag.cancel()
            achieved = (len(load) + probes) / max(duration, send_end - started)
        finally:
            await consumer.stop()
            await producer.stop()
            await prober.stop()
        if not lat["sql"] or not lat["assigned"]:
            raise RuntimeError("no probe lead.sql or lead.assigned arrived")
        self.result.update(latency_offered_per_s=round(offered, 1),
                           latency_achieved_per_s=round(achieved, 1), latency_probes=probes,
                           sql_received=len(lat["sql"]), assigned_received=len(lat["assigned"]),
                           latency_queued=queued)
        for out, values in lat.items():
            ms = [v * 1000 for v in values]
            for stat, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
                self.result[f"{out}_{stat}_ms"] = round(percentile(ms, q), 1)
        if lag_ms:  # the load generator's own delay, inside every probe's figure
            self.result["bench_loop_lag_p99_ms"] = round(percentile(lag_ms, 0.99), 1)
        _log(f"latency: {len(lat['sql'])}/{probes} lead.sql p99 {self.result['sql_p99_ms']} ms,"
             f" {len(lat['assigned'])}/{probes} lead.assigned p99"
             f" {self.result['assigned_p99_ms']} ms ({queued} queued)")

    # ---------------------------------------------------------------- routing ceiling

    async def routing_ceiling(self, prefix: str, mix: Mix) -> None:
        """The single routing partition's SQL rate, the routing stage alone. The "route"
        records the leads stage would write for `routing_probes` new SQLs go straight onto the
        routing partition in one transaction, so the stage finds them all at once; sent as
        touchpoints, they would time the leads stage's output instead. Routing needs nothing
        of a lead beyond its route record (the roster and named accounts are phase 1's).
        Together with the share of phase 1's touchpoints that became SQLs, that gives the
        touchpoint rate from which routing is the bottleneck."""
        topics = Topics.with_prefix(prefix)
        count = self.config.routing_probes
        now = datetime.now(UTC)
        profiles = probe_profiles(self.run + "rc", count, now)
        routes = probe_routes(profiles, now, {key.decode() for key, _ in mix.accounts})
        if len(routes) != count:
            raise RuntimeError(f"routing ceiling: {len(routes)} of {count} probes became SQL")
        group = self.settings(prefix).app_id
        routing = [TopicPartition(topics.routing, 0)]
        # Tansu has no transactions (and its worker reads uncommitted): plainly produced, the
        # records arrive at the producer's pace, which then caps the figure
        txn = f"{self.run}.routing-ceiling" if self.broker_kind == "kafka" else None
        admin = await self.admin()
        try:
            base = await committed_total(admin, group, routing)
            sampler = asyncio.create_task(sample_commits(
                admin, group, routing, base + count, self.config.phase_timeout,
                self.procs.check, interval=0.05))
            try:
                await produce(self.bootstrap, topics.routing, routes, self.client,
                              partition_of=lambda _key: 0, transactional_id=txn)
            except BaseException:
                sampler.cancel()
                raise
            samples = await sampler
        finally:
            await admin.close()
        rate = throughput(samples, base + 0.1 * count, base + 0.9 * count)
        sqls = await count_sqls(self.bootstrap, topics.transitions, self.client,
                                before=self.r1_ended_at)
        self.result.update(routing_sql_per_s=round(rate, 1),
                           sql_per_touchpoint=round(sqls / max(1, len(mix.touchpoints)), 4))
        _log(f"routing ceiling: {rate:,.0f} SQLs/s routed by the one routing partition;"
             f" {sqls:,} SQLs in phase 1")

    # ---------------------------------------------------------------- raw and floor

    async def raw(self, topic: str, total: int) -> float:
        out_topic = f"{self.run}.raw.out"
        admin = await self.admin()
        try:
            await admin.create_topics([NewTopic(out_topic, self.config.partitions, 1)])
        finally:
            await admin.close()
        consumer = AIOKafkaConsumer(topic, group_id=f"{self.run}.raw",
                                    bootstrap_servers=self.bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    fetch_max_wait_ms=100, **self.client)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all",
                                    max_batch_size=256 * 1024, **self.client)
        await consumer.start()
        await producer.start()
        samples: list[tuple[float, int]] = [(time.monotonic(), 0)]
        count = 0
        try:
            deadline = time.monotonic() + self.config.phase_timeout
            last_commit = time.monotonic()
            while count < total and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500, max_records=5_000)
                pending = [await producer.send(out_topic, r.value, key=r.key)
                           for records in batches.values() for r in records]
                if pending:
                    await asyncio.gather(*pending)
                count += len(pending)
                now = time.monotonic()
                if now - last_commit >= 1.0 or count >= total:
                    await consumer.commit()
                    last_commit = now
                samples.append((time.monotonic(), count))
        finally:
            await consumer.stop()
            await producer.stop()
        rate = throughput(samples, WARMUP_FRACTION * total, END_FRACTION * total)
        _log(f"raw: {rate:,.0f} events/s ({count:,}/{total:,} passed through)")
        return rate

    async def consumer_process(self, name: str, args: list[str], group: str, topic: str,
                               total: int, env: dict[str, str]) -> float:
        """Run `python -m <args>` (a consumer in `group`) until it has committed `total`
        records of `topic`; its rate between the warm-up and end marks, like the router's."""
        full_env = dict(os.environ)
        full_env.update({"LEADROUTER_BROKER": self.broker_url,
                         "LEADROUTER_PARTITIONS": str(self.config.partitions),
                         "PYTHONUNBUFFERED": "1", **env})
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", *args], stdout=log,
                                    stderr=subprocess.STDOUT, env=full_env,
                                    start_new_session=True)
        self.procs.others.append(proc)
        _log(f"{name}: started (pid {proc.pid}, log {log_path})")
        admin = await self.admin()
        try:
            samples = await sample_commits(admin, group, self.tps(topic), total,
                                           self.config.phase_timeout, self.procs.check)
        finally:
            await admin.close()
            _kill_group(proc)
            self.procs.others.remove(proc)
        rate = throughput(samples, WARMUP_FRACTION * total, END_FRACTION * total)
        _log(f"{name}: {rate:,.0f} events/s of {topic} ({samples[-1][1]:,}/{total:,}"
             " committed)")
        return rate

    async def floor(self, topic: str, total: int, mode: str) -> float:
        app_id = f"{self.run}.floor-{mode}"
        return await self.consumer_process(
            f"floor-{mode}", ["router.harness.bench.floor", "--topic", topic, "--app-id", app_id,
                              "--mode", mode],
            app_id, topic, total,
            {"LEADROUTER_DATA_DIR": str(self.workdir / self.run / "data-floor")})

    async def direct(self, inputs: str, topic: str, total: int) -> float:
        """The batched-ingestion prototype (router/harness/bench/direct.py) on phase 1's inputs; it
        reads the profiles alongside, and its rate counts the touchpoints."""
        group = f"{self.run}.direct"
        return await self.consumer_process(
            "direct", ["router.harness.bench.direct", "--inputs", inputs,
                       "--outputs", f"{self.run}.direct.", "--group", group],
            group, topic, total, {"LEADROUTER_RULES": ""})

    # ---------------------------------------------------------------- memory only

    async def memory_phases(self) -> dict[str, Any]:
        """`leadrouter bench --memory`: one worker loads the mix (throughput, peak RSS, state),
        is killed, and a new one restores it (restore time, its peak RSS). For state sizes
        the full run would take too long with, e.g. a million leads in RocksDB."""
        cfg = self.config
        began = time.monotonic()
        mix = build_mix(cfg.leads, cfg.touchpoints, datetime.now(UTC))
        self.result.update(leads=len(mix.profiles), touchpoints=len(mix.touchpoints),
                           partitions=cfg.partitions, mode=cfg.mode,
                           store=self.settings("").store)
        one, (worker,), _ = await self.router_phase(mix, "r1", 1)
        self.result["router_1w_events_per_s"] = round(one, 1)
        prefix = f"{self.run}.r1."
        killed = await self.crash_and_state(worker, prefix)
        restored = await self.restore(prefix, killed)
        self.result["restored_worker_peak_rss_mb"] = round(
            rss_mb(restored.process.pid if restored.process else None), 1)
        restored.kill()
        self.result["rss_mb_per_100k_leads"] = round(
            self.result["worker_peak_rss_mb"] * 100_000 / max(1, len(mix.profiles)), 1)
        self.result["wall_seconds"] = round(time.monotonic() - began, 1)
        return self.result

    # ---------------------------------------------------------------- all of it

    async def all_phases(self) -> dict[str, Any]:
        cfg = self.config
        began = time.monotonic()
        mix = build_mix(cfg.leads, cfg.touchpoints, datetime.now(UTC))
        sizes = [len(v) for _, v in mix.touchpoints]
        _log(f"mix: {len(mix.profiles):,} leads, {len(mix.touchpoints):,} touchpoints of"
             f" {min(sizes)}-{max(sizes)} B, {len(mix.reps)} reps in {mix.pools} pools")
        self.result.update(leads=len(mix.profiles), touchpoints=len(mix.touchpoints),
                           reps=len(mix.reps), pools=mix.pools, partitions=cfg.partitions,
                           mode=cfg.mode, store=self.settings("").store,
                           guarantee="exactly_once" if self.broker_kind == "kafka"
                           else "at_least_once")

        one, (worker,), r1 = await self.router_phase(mix, "r1", 1)
        self.result["router_1w_events_per_s"] = round(one, 1)
        prefix = f"{self.run}.r1."
        killed = await self.crash_and_state(worker, prefix)

        # raw and floor read exactly the touchpoints the router read (nothing else runs)
        total = len(mix.touchpoints)
        self.result["raw_events_per_s"] = round(await self.raw(r1.touchpoints, total), 1)
        for mode in ("take", "iter"):
            rate = (await self.floor(r1.touchpoints, total, mode)
                    if mode in cfg.floor_modes else 0.0)
            self.result[f"floor_{mode}_events_per_s"] = round(rate, 1)

        if cfg.direct:
            self.result["direct_events_per_s"] = round(
                await self.direct(prefix, r1.touchpoints, total), 1)

        restored = await self.restore(prefix, killed)
        await self.latency(mix, prefix, one / 2)
        restored_rss = round(rss_mb(restored.process.pid if restored.process else None), 1)
        self.result["restored_worker_peak_rss_mb"] = restored_rss
        self.result["worker_peak_rss_mb"] = max(self.result["worker_peak_rss_mb"], restored_rss)
        await self.routing_ceiling(prefix, mix)
        restored.kill()

        if self.broker_kind == "kafka":  # Tansu runs at-least-once anyway
            alo, (alo_worker,), _ = await self.router_phase(
                mix, "r1alo", 1, env={"LEADROUTER_PROCESSING_GUARANTEE": "at_least_once"})
            self.result["router_1w_alo_events_per_s"] = round(alo, 1)
            alo_worker.kill()

        if cfg.partitions > 1:  # every touchpoint through the repartition topic
            mis, (mis_worker,), _ = await self.router_phase(mix, "r1mis", 1, misplaced=True)
            self.result["router_1w_misplaced_events_per_s"] = round(mis, 1)
            mis_worker.kill()

        two, workers, _ = await self.router_phase(mix, "r2", 2)
        self.result["router_2w_events_per_s"] = round(two, 1)
        self.result["worker_2w_peak_rss_mb"] = round(max(
            rss_mb(w.process.pid if w.process else None) for w in workers), 1)
        for w in workers:
            w.kill()
        self.result["wall_seconds"] = round(time.monotonic() - began, 1)
        return add_ratios(self.result)
