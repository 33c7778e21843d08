"""`leadrouter bench`: the router against faust's floor and raw aiokafka, in one run.

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
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from router.adapters.tansu_quirks import fetch_end_offsets
from router.adapters.topics import Topics, ensure_topics
from router.domain.events import Rep
from router.domain.rules import load_rules
from router.harness.brokers import KafkaBroker, TansuBroker, describe, local_broker
from router.harness.traffic import BEHAVIOUR, PEOPLE, TOPICS, TrafficGenerator, _pick, _rep
from router.harness.workers import WorkerProcess
from router.settings import Settings, bootstrap_servers, from_env

MIN_TOUCHPOINT_BYTES = 200
MAX_TOUCHPOINT_BYTES = 400
REPS_PER_POOL = 10
REP_CAPACITY = 1_000_000  # room for every lead: assignments never queue
POOL_STAFF: dict[str, tuple[list[str], list[str]]] = {  # languages, time zones
    "NA": (["en", "fr", "es"], ["America/New_York", "America/Chicago", "America/Toronto"]),
    "LATAM": (["es", "pt"], ["America/Mexico_City", "America/Sao_Paulo"]),
    "EMEA": (["de", "fr", "it", "es", "nl", "en"], ["Europe/Berlin", "Europe/London"]),
    "APAC": (["ja", "hi", "en"], ["Asia/Tokyo", "Asia/Kolkata", "Australia/Sydney"]),
    "global": (["en"], ["UTC"]),
}


# --------------------------------------------------------------------------------------------
# Pure helpers (unit-tested in tests/unit/test_bench.py)
# --------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty sample, as bench-latency reports."""
    if not values:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within 0..1, not {q}")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def throughput(samples: Sequence[tuple[float, int]], lo: float, hi: float,
               not_before: float = -math.inf) -> float:
    """Events/s between the first sample at or past `lo` (taken no earlier than `not_before`)
    and the first one at or past `hi`; samples are (monotonic time, committed total).

    When one step jumped over both marks, the window starts at the sample before the jump.
    When `hi` was never reached (a time limit), it ends where the last progress was seen."""
    eligible = [(t, c) for t, c in samples if t >= not_before]
    start = next((i for i, (_, c) in enumerate(eligible) if c >= lo), None)
    if start is None:
        raise ValueError(f"the warm-up mark ({lo:.0f}) was never reached")
    if eligible[start][1] >= hi and start > 0:
        start -= 1
    t1, c1 = eligible[start]
    later = [(t, c) for t, c in eligible[start + 1:] if c > c1 and t > t1]
    if not later:
        raise ValueError("no progress after the warm-up mark")
    top = min(hi, later[-1][1])  # the first sample that saw the final count, not a repeat
    t2, c2 = next((t, c) for t, c in later if c >= top)
    return (c2 - c1) / (t2 - t1)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def state_size(records: Iterable[tuple[bytes | None, bytes | None]]) -> tuple[int, int]:
    """(keys, bytes) of a changelog read from the beginning: the newest record per key
    (key + value bytes); a tombstone (None value) removes its key."""
    latest: dict[bytes, int] = {}
    fold_state(latest, records)
    return len(latest), sum(latest.values())


def fold_state(latest: dict[bytes, int],
               records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
    for key, value in records:
        k = key or b""
        if value is None:
            latest.pop(k, None)
        else:
            latest[k] = len(k) + len(value)


def parse_vmhwm(status: str, field: str = "VmHWM") -> int:
    """Peak (VmHWM) or current (VmRSS) resident set size in bytes from /proc/<pid>/status."""
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            amount, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"unexpected {field} unit {unit!r}")
            return int(amount) * 1024
    raise ValueError(f"no {field} line (not a Linux /proc/<pid>/status?)")


def parse_cpu_seconds(stat: str, ticks_per_second: int) -> float:
    """User + system CPU seconds of a process from the text of /proc/<pid>/stat."""
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / ticks_per_second


@dataclass(frozen=True)
class Target:
    key: str
    op: str  # ">=" or "<="
    threshold: float
    text: str

    def met(self, value: float) -> bool:
        return value >= self.threshold if self.op == ">=" else value <= self.threshold


TARGETS: tuple[Target, ...] = (
    Target("router_vs_floor", ">=", 0.8, ">= 0.8 x"),
    Target("two_vs_one_worker", ">=", 1.6, ">= 1.6 x"),
    Target("sql_p99_ms", "<=", 250.0, "p99 <= 250 ms"),
    Target("assigned_p99_ms", "<=", 500.0, "p99 <= 500 ms"),
    Target("state_bytes_per_lead", "<=", 2048.0, "<= 2 KB"),
    Target("restore_s_per_100k_leads", "<=", 10.0, "<= 10 s"),
)
LATENCY_KEYS = tuple(f"{out}_{stat}_ms" for out in ("sql", "assigned")
                     for stat in ("p50", "p95", "p99", "max"))
REQUIRED_KEYS: tuple[str, ...] = (
    "leads", "touchpoints", "reps", "pools", "partitions",
    "raw_events_per_s", "floor_take_events_per_s", "floor_iter_events_per_s",
    "floor_events_per_s", "router_1w_events_per_s", "router_2w_events_per_s",
    "router_vs_floor", "router_vs_raw", "two_vs_one_worker",
    "latency_offered_per_s", "latency_achieved_per_s", "latency_probes",
    "sql_received", "assigned_received", *LATENCY_KEYS,
    "worker_peak_rss_mb", "worker_2w_peak_rss_mb", "state_leads", "changelog_records",
    "state_bytes", "state_bytes_per_lead", "state_mb_per_100k_leads",
    "cold_start_seconds", "restore_seconds", "restore_s_per_100k_leads",
    "wall_seconds",
)


def add_ratios(result: dict[str, Any]) -> dict[str, Any]:
    """The derived figures: floor = the faster faust variant, and the three ratios."""
    out = dict(result)
    out["floor_events_per_s"] = max(out["floor_take_events_per_s"],
                                    out["floor_iter_events_per_s"])
    out["router_vs_floor"] = round(ratio(out["router_1w_events_per_s"],
                                         out["floor_events_per_s"]), 3)
    out["router_vs_raw"] = round(ratio(out["router_1w_events_per_s"],
                                       out["raw_events_per_s"]), 3)
    out["two_vs_one_worker"] = round(ratio(out["router_2w_events_per_s"],
                                           out["router_1w_events_per_s"]), 3)
    if "direct_events_per_s" in out:  # the design prototype (router/harness/bench/direct.py)
        out["direct_vs_floor"] = round(ratio(out["direct_events_per_s"],
                                             out["floor_events_per_s"]), 3)
    return out


def targets_summary(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t.key: {"target": f"{t.op} {t.threshold:g}", "met": t.met(float(result[t.key]))}
            for t in TARGETS}


def json_line(result: dict[str, Any]) -> str:
    """One JSON object with every figure (REQUIRED_KEYS) and the target verdicts."""
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise KeyError(f"bench result lacks {', '.join(missing)}")
    body = {"bench": "leadrouter", **result, "targets": targets_summary(result)}
    return orjson.dumps(body).decode()


def _verdict(result: dict[str, Any], key: str) -> str:
    target = next(t for t in TARGETS if t.key == key)
    return f"{target.text:<15} {'met' if target.met(float(result[key])) else 'MISSED'}"


def render_table(result: dict[str, Any]) -> str:
    """The human table: figures, ratios, and each target with met / MISSED."""
    r = result
    rows: list[tuple[str, str, str]] = []

    def rate(label: str, key: str) -> None:
        rows.append((label, f"{r[key]:>10,.0f} ev/s", ""))

    rate("raw aiokafka consume -> produce", "raw_events_per_s")
    rate("faust floor, take_events", "floor_take_events_per_s")
    rate("faust floor, async for", "floor_iter_events_per_s")
    rate("router, 1 worker", "router_1w_events_per_s")
    rate("router, 2 workers", "router_2w_events_per_s")
    rows.append(("router / faust floor", f"{r['router_vs_floor']:>10.2f} x",
                 _verdict(r, "router_vs_floor")))
    rows.append(("router / raw", f"{r['router_vs_raw']:>10.2f} x", ""))
    if "direct_events_per_s" in r:
        rate("prototype: qualifier on plain aiokafka", "direct_events_per_s")
        rows.append(("prototype / faust floor", f"{r['direct_vs_floor']:>10.2f} x", ""))
    rows.append(("2 workers / 1 worker", f"{r['two_vs_one_worker']:>10.2f} x",
                 _verdict(r, "two_vs_one_worker")))
    for out, label in (("sql", "lead.sql"), ("assigned", "lead.assigned")):
        rows.append((
            f"touchpoint -> {label} p50/p95/p99/max",
            f"{r[out + '_p50_ms']:.0f}/{r[out + '_p95_ms']:.0f}/{r[out + '_p99_ms']:.0f}"
            f"/{r[out + '_max_ms']:.0f} ms",
            _verdict(r, f"{out}_p99_ms"),
        ))
    rows.append(("worker peak RSS (1 worker / 2 workers)",
                 f"{r['worker_peak_rss_mb']:.0f} / {r['worker_2w_peak_rss_mb']:.0f} MB", ""))
    for phase, label in (("r1", "1 worker"), ("r2", "2 workers")):
        if f"{phase}_broker_cpu_cores" in r:
            rows.append((f"CPU in use, {label}: router / broker",
                         f"{r[phase + '_worker_cpu_cores']:.2f} / "
                         f"{r[phase + '_broker_cpu_cores']:.2f} cores", ""))
    rows.append(("state per active lead", f"{r['state_bytes_per_lead']:>10,.0f} B",
                 _verdict(r, "state_bytes_per_lead")))
    rows.append(("state per 100k leads", f"{r['state_mb_per_100k_leads']:>10.1f} MB", ""))
    rows.append(("restore per 100k leads", f"{r['restore_s_per_100k_leads']:>10.1f} s",
                 _verdict(r, "restore_s_per_100k_leads")))
    width = max(len(label) for label, _, _ in rows)
    head = (
        f"leadrouter bench ({r.get('mode', 'full')}): {r['touchpoints']:,} touchpoints"
        f" (200-400 B) over {r['leads']:,} leads, {r['reps']} reps in {r['pools']} pools,"
        f" {r['partitions']} partitions, {r.get('store', 'memory')} store, one broker;"
        f" {r['wall_seconds']:.0f} s"
    )
    lines = [head, f"{'figure':<{width}}  {'measured':>18}  target"]
    lines += [f"{label:<{width}}  {value:>18}  {verdict}".rstrip()
              for label, value, verdict in rows]
    lines.append(
        f"latency at {r['latency_offered_per_s']:,.0f} touchpoints/s offered (half the 1-worker"
        f" max; {r['latency_achieved_per_s']:,.0f}/s achieved), {r['latency_probes']:.0f}"
        f" probes: {r['sql_received']:.0f} lead.sql, {r['assigned_received']:.0f}"
        " lead.assigned read"
    )
    lines.append(
        f"state: {r['state_leads']:,} leads, {r['changelog_records']:,} changelog records;"
        f" restore {r['restore_seconds']:.1f} s to /ready (a cold start on empty topics"
        f" took {r['cold_start_seconds']:.1f} s)"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The event mix
# --------------------------------------------------------------------------------------------


def _pad(event: dict[str, Any], size: int) -> bytes:
    """The event as JSON of at least `size` bytes, padded with a user-agent property."""
    raw = orjson.dumps(event)
    missing = size - len(raw) - len(',"user_agent":""')
    if missing > 0:
        event["properties"]["user_agent"] = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"
                                             " (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
                                             * 4)[:missing]
        raw = orjson.dumps(event)
    return raw


def bench_roster(now: datetime) -> list[tuple[bytes, bytes]]:
    """10 reps in each pool of the default rules (territories + fallback), validated as Rep.
    Rep ids R-01.. so the traffic's named accounts (owners R-03, R-05, R-08) have owners."""
    rules = load_rules(None)
    pools = [t.pool for t in rules.routing.territories] + [rules.routing.fallback_pool]
    out = []
    n = 0
    for pool in dict.fromkeys(pools):
        languages, zones = POOL_STAFF.get(pool, (["en"], ["UTC"]))
        for i in range(REPS_PER_POOL):
            n += 1
            rep = _rep(f"R-{n:02d}", f"Bench Rep {n}", [pool],
                       sorted({languages[i % len(languages)], "en"}), zones[i % len(zones)],
                       max_open_leads=REP_CAPACITY)
            Rep.model_validate(rep)
            out.append((rep["rep_id"].encode(), orjson.dumps(rep)))
    return out


@dataclass
class Mix:
    """Pre-encoded records: profiles are set-up, touchpoints are what gets measured."""

    profiles: list[tuple[bytes, bytes]]
    touchpoints: list[tuple[bytes, bytes]]
    reps: list[tuple[bytes, bytes]]
    accounts: list[tuple[bytes, bytes]]
    generator: TrafficGenerator
    rng: random.Random
    sequence: int = 0

    @property
    def pools(self) -> int:
        return len({p for _, v in self.reps for p in orjson.loads(v)["pools"]})

    def more_touchpoints(self, count: int, now: datetime) -> list[tuple[bytes, bytes]]:
        """New touchpoints (fresh event ids) of the same leads, in random lead order."""
        population = self.generator.population
        leads = [population[i % len(population)] for i in range(self.sequence,
                                                                 self.sequence + count)]
        self.rng.shuffle(leads)
        out = []
        for lead in leads:
            self.sequence += 1
            out.append(self._touchpoint(lead.lead_id, lead.temperament,
                                        lead.profile["company"]["domain"], now))
        return out

    def _touchpoint(self, lead_id: str, temperament: str, domain: str, now: datetime
                    ) -> tuple[bytes, bytes]:
        rng = self.rng
        kind = _pick(rng, BEHAVIOUR[temperament])
        props: dict[str, Any] = {"topic": rng.choice(TOPICS),
                                 "url": f"/{kind.replace('_', '-')}/{rng.randrange(1000)}",
                                 "session_id": f"{rng.getrandbits(64):016x}"}
        if kind == "quiz_completed":
            props["score"] = rng.randint(40, 100)
        occurred = now - timedelta(seconds=rng.uniform(0, 3 * 86400))
        event = {"event_id": f"bt-{self.generator.seed}-{self.sequence}", "lead_id": lead_id,
                 "type": kind, "occurred_at": _iso(occurred), "channel": "web",
                 "account_domain": domain, "properties": props}
        size = rng.randint(MIN_TOUCHPOINT_BYTES, MAX_TOUCHPOINT_BYTES)
        return lead_id.encode(), _pad(event, size)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_mix(leads: int, touchpoints: int, now: datetime, seed: int = 11) -> Mix:
    """`leads` synthetic leads (traffic.py's population: companies, roles, temperaments), one
    profile each, and `touchpoints` touchpoints spread evenly over them in random order."""
    generator = TrafficGenerator(leads=leads, seed=seed, bad_event_share=0.0)
    updated = _iso(now - timedelta(days=4))
    profiles = [(lead.lead_id.encode(), orjson.dumps(dict(lead.profile, updated_at=updated)))
                for lead in generator.population]
    mix = Mix(profiles, [], bench_roster(now), generator.named_accounts(), generator,
              random.Random(seed + 1))
    mix.touchpoints = mix.more_touchpoints(touchpoints, now)
    return mix


def probe_profiles(run: str, count: int, now: datetime) -> list[tuple[bytes, bytes]]:
    """Probe leads: fit decision makers (VP of a 300-person SaaS company); one demo request
    makes each SQL at once (direct path). Countries cycle through the four territory pools."""
    out = []
    for i in range(count):
        lead = f"P-{run}-{i}"
        _, language, country = PEOPLE[i % len(PEOPLE)]
        profile = {"lead_id": lead, "updated_at": _iso(now - timedelta(minutes=1)),
                   "title": "VP Sales", "seniority": "vp", "buying_role": "decision_maker",
                   "language": language, "country": country,
                   "company": {"name": "Probe Inc", "domain": "probe.example",
                               "employees": 300, "industry": "saas"}}
        out.append((lead.encode(), orjson.dumps(profile)))
    return out


def probe_touchpoint(lead_id: bytes, at: datetime, size: int = 300) -> bytes:
    lead = lead_id.decode()
    return _pad({"event_id": f"{lead}-demo", "lead_id": lead, "type": "demo_request",
                 "occurred_at": _iso(at), "channel": "web", "account_domain": "probe.example",
                 "properties": {"url": "/demo"}}, size)


# --------------------------------------------------------------------------------------------
# Kafka helpers
# --------------------------------------------------------------------------------------------


_STARTED = [time.monotonic()]


def _log(text: str) -> None:
    print(f"[{time.monotonic() - _STARTED[0]:6.1f} s] {text}", file=sys.stderr, flush=True)


async def produce(bootstrap: list[str], topic: str, records: Sequence[tuple[bytes, bytes]],
                  client: dict[str, Any], chunk: int = 10_000) -> float:
    """Send every record (acks from the leader), as fast as the producer goes; seconds taken."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                max_batch_size=256 * 1024, **client)
    await producer.start()
    started = time.monotonic()
    try:
        for i in range(0, len(records), chunk):
            pending = [await producer.send(topic, value, key=key)
                       for key, value in records[i:i + chunk]]
            await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - started


async def committed_total(admin: AIOKafkaAdminClient, group: str,
                          tps: list[TopicPartition]) -> int:
    # always name the partitions: Tansu answers the "all partitions" form with a broken frame
    offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
    return sum(m.offset for m in offsets.values() if m is not None and m.offset > 0)


async def sample_commits(admin: AIOKafkaAdminClient, group: str, tps: list[TopicPartition],
                         until: int, timeout: float, alive: Callable[[], None],
                         interval: float = 0.1) -> list[tuple[float, int]]:
    """(monotonic time, committed total) every `interval` until `until` or `timeout`."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    last_log = time.monotonic()
    while True:
        alive()
        try:
            count = await committed_total(admin, group, tps)
        except Exception:  # the group may not exist yet
            count = samples[-1][1] if samples else 0
        now = time.monotonic()
        samples.append((now, count))
        if count >= until or now >= deadline:
            return samples
        if now - last_log >= 10:
            _log(f"  {group}: {count:,}/{until:,} committed")
            last_log = now
        await asyncio.sleep(interval)


def rss_mb(pid: int | None, field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of a process in MB; 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        return parse_vmhwm(Path(f"/proc/{pid}/status").read_text(), field) / 1e6
    except (OSError, ValueError):
        return 0.0


def cpu_seconds(pids: Iterable[int | None]) -> float:
    total = 0.0
    for pid in pids:
        if pid is None:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += parse_cpu_seconds(Path(f"/proc/{pid}/stat").read_text(),
                                       os.sysconf("SC_CLK_TCK"))
    return total


async def read_state_size(bootstrap: list[str], topic: str, partitions: int,
                          client: dict[str, Any], timeout: float = 120.0
                          ) -> tuple[int, int, int]:
    """(keys, bytes of the newest record per key, records) of a changelog topic."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    ends = await fetch_end_offsets(bootstrap, tps)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=100, max_partition_fetch_bytes=4 << 20,
                                fetch_max_bytes=32 << 20, **client)
    await consumer.start()
    latest: dict[bytes, int] = {}
    records = 0
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        remaining = {tp for tp in tps if ends.get(tp, 0) > 0}
        while remaining and time.monotonic() < deadline:
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=50_000)
            for batch in batches.values():
                records += len(batch)
                fold_state(latest, ((r.key, r.value) for r in batch))
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return len(latest), sum(latest.values()), records


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


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


QUICK = BenchConfig(leads=5_000, touchpoints=20_000, latency_seconds=6.0, max_probe_rate=20.0,
                    phase_timeout=40.0, mode="quick")
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

    def worker(self, prefix: str, name: str, data: str | None = None) -> WorkerProcess:
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

    async def router_phase(self, mix: Mix, name: str, workers: int
                           ) -> tuple[float, list[WorkerProcess], Topics]:
        """Start `workers` on empty topics, load the set-up, then time the touchpoints."""
        prefix = f"{self.run}.{name}."
        topics = Topics.with_prefix(prefix)
        await ensure_topics(self.settings(prefix), topics)
        await produce(self.bootstrap, topics.reps, mix.reps, self.client)
        await produce(self.bootstrap, topics.accounts, mix.accounts, self.client)
        started = time.monotonic()
        procs = [self.worker(prefix, f"{name}-worker{i + 1}") for i in range(workers)]
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
            sampler = asyncio.create_task(sample_commits(
                admin, group, self.tps(topics.touchpoints), total, self.config.phase_timeout,
                self.procs.check))
            try:
                load_seconds = await produce(self.bootstrap, topics.touchpoints, mix.touchpoints,
                                             self.client)
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
        consumer = AIOKafkaConsumer(topics.transitions, topics.assignments,
                                    bootstrap_servers=self.bootstrap,
                                    auto_offset_reset="latest", fetch_max_wait_ms=100,
                                    **self.client)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5,
                                    **self.client)
        prober = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0, **self.client)
        await consumer.start()
        await producer.start()
        await prober.start()
        sent_at: dict[bytes, float] = {}
        lat: dict[str, list[float]] = {"sql": [], "assigned": []}
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

            await asyncio.gather(send_background(), send_probes(), consume())
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
        _log(f"latency: {len(lat['sql'])}/{probes} lead.sql p99 {self.result['sql_p99_ms']} ms,"
             f" {len(lat['assigned'])}/{probes} lead.assigned p99"
             f" {self.result['assigned_p99_ms']} ms ({queued} queued)")

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
                           mode=cfg.mode, store=self.settings("").store)

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
        restored.kill()

        two, workers, _ = await self.router_phase(mix, "r2", 2)
        self.result["router_2w_events_per_s"] = round(two, 1)
        self.result["worker_2w_peak_rss_mb"] = round(max(
            rss_mb(w.process.pid if w.process else None) for w in workers), 1)
        for w in workers:
            w.kill()
        self.result["wall_seconds"] = round(time.monotonic() - began, 1)
        return add_ratios(self.result)


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
        bench = Bench(cfg, broker, workdir, procs, run=run,
                      broker_pids=embedded.pids if embedded else [])
        result = asyncio.run(bench.all_phases())
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
    print(render_table(result))
    print(json_line(result), flush=True)
    return 0

