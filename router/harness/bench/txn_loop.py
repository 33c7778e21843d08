"""`leadrouter bench-txn`: the same exactly-once consume-transform-produce loop with aiokafka
and with confluent-kafka (librdkafka), side by side, on one fresh local Kafka broker.

Why: the router's p99 input->output is 250-480 ms against a 60 ms target, and one of its
transactions takes ~100 ms when nine tasks commit side by side (README "Measured"). This
answers whether the client is the limit: each variant (txn_variants.py) runs in its own
process on its own fresh topics, one after the other, against a load generator at a fixed
rate whose values carry the send time; a read_committed reader on the output takes the
end-to-end latency (visible time minus send time, one machine, one wall clock) and counts
every sequence number, so a figure is only reported with the check that each input came out
exactly once. The first `warmup` seconds of inputs are checked but not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from router.harness.bench.txn_variants import FETCH_WAIT_MS, VARIANTS, LoopSpec, loop_main

TICK_S = 0.002  # the generator's pace: sends whatever is due every 2 ms
STOP_S = 30.0  # how long a loop may take to stop and report once told to


@dataclass(frozen=True, slots=True)
class TxnBenchConfig:
    partitions: int = 9  # the router's input partitions
    rate: float = 1000.0  # events/s offered
    duration: float = 20.0  # seconds of load per variant
    warmup: float = 2.0  # seconds of load checked but not timed
    drain: float = 20.0  # after the load, how long the reader waits for the rest
    ready: float = 60.0  # how long a loop may take to join its group
    variants: tuple[str, ...] = field(default_factory=lambda: tuple(VARIANTS))


@dataclass
class ReaderResult:
    sent: int = 0
    counts: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank on the sorted values (as bench-latency's); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def summarize(variant: str, reader: ReaderResult, stats: dict[str, Any]) -> dict[str, Any]:
    """One variant's figures: throughput, end-to-end latency, transactions, and the check."""
    delivered = len(reader.counts)
    txn_ms: list[float] = stats.get("txn_ms", [])
    txns = len(txn_ms)
    window = stats.get("last_at", 0.0) - stats.get("first_at", 0.0)
    processed = stats.get("processed", 0)
    lat = reader.latencies_ms
    missing = sum(1 for seq in range(reader.sent) if seq not in reader.counts)
    return {
        "variant": variant, "description": VARIANTS.get(variant, ""),
        "sent": reader.sent, "delivered": delivered,
        "duplicates": sum(c - 1 for c in reader.counts.values()),
        "missing": missing,
        "unexpected": sum(1 for seq in reader.counts if not 0 <= seq < reader.sent),
        "events_per_s": round(processed / window, 1) if window > 0 else None,
        "e2e_p50_ms": _ms(percentile(lat, 0.50)), "e2e_p95_ms": _ms(percentile(lat, 0.95)),
        "e2e_p99_ms": _ms(percentile(lat, 0.99)), "e2e_max_ms": _ms(max(lat, default=None)),
        "txns": txns, "txn_p50_ms": _ms(percentile(txn_ms, 0.50)),
        "txn_p99_ms": _ms(percentile(txn_ms, 0.99)),
        "records_per_txn": round(processed / txns, 1) if txns else None,
        "steps_p50_ms": {name: _ms(percentile(v, 0.50))
                         for name, v in stats.get("steps_ms", {}).items()},
        "requests_per_txn": {name: round(n / txns, 2) for name, n in
                             sorted(stats.get("requests", {}).items()) if txns},
        "error": stats.get("error", ""),
    }


def exactly_once(result: dict[str, Any]) -> bool:
    return bool(result["sent"] and not result["error"] and result["delivered"] == result["sent"]
                and not result["duplicates"] and not result["missing"]
                and not result["unexpected"])


COLUMNS = (("variant", "variant"), ("ev/s", "events_per_s"), ("e2e p50", "e2e_p50_ms"),
           ("p95", "e2e_p95_ms"), ("p99", "e2e_p99_ms"), ("txns", "txns"),
           ("txn p50", "txn_p50_ms"), ("txn p99", "txn_p99_ms"), ("rec/txn", "records_per_txn"))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_table(results: list[dict[str, Any]], cfg: TxnBenchConfig) -> str:
    """Plain text: one row per variant, then per variant where a transaction's time goes."""
    header = [name for name, _ in COLUMNS] + ["exactly once"]
    rows = [[_cell(r.get(key)) for _, key in COLUMNS]
            + ["yes" if exactly_once(r) else
               f"NO ({r['missing']} missing, {r['duplicates']} dup)" + (" error" if r["error"]
                                                                        else "")]
            for r in results]
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [f"bench-txn: {cfg.partitions} input partitions, {cfg.rate:,.0f} events/s for"
           f" {cfg.duration:.0f} s per variant (first {cfg.warmup:.0f} s not timed);"
           " end to end = read_committed visible - sent, ms", line(header),
           line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    for r in results:
        steps = ", ".join(f"{k} {_cell(v)}" for k, v in r["steps_p50_ms"].items())
        reqs = ", ".join(f"{k} {v:g}" for k, v in r["requests_per_txn"].items())
        out.append(f"  {r['variant']}: step p50 ms: {steps or '-'}; producer requests per"
                   f" txn: {reqs or '-'}" + (f"; error: {r['error']}" if r["error"] else ""))
    return "\n".join(out)


# -- one variant -----------------------------------------------------------------------------


async def _create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def _drive(bootstrap: str, spec: LoopSpec, cfg: TxnBenchConfig) -> ReaderResult:
    """The load at a fixed rate, and the read_committed reader on the output, together."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    result = ReaderResult()
    timed_from = int(cfg.rate * cfg.warmup)
    total = max(1, int(cfg.rate * cfg.duration))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                              enable_auto_commit=False, isolation_level="read_committed",
                              fetch_max_wait_ms=FETCH_WAIT_MS)
    await producer.start()
    await reader.start()
    generating = True

    async def generate() -> None:
        nonlocal generating
        began = time.monotonic()
        while result.sent < total:
            due = min(total, int((time.monotonic() - began) * cfg.rate) + 1)
            while result.sent < due:
                value = orjson.dumps({"seq": result.sent, "sent": time.time()})
                await producer.send(spec.input_topic, value, key=str(result.sent).encode())
                result.sent += 1
            await asyncio.sleep(TICK_S)
        await producer.flush()
        generating = False

    async def read() -> None:
        deadline = time.monotonic() + cfg.duration + cfg.drain + 10
        settle_until: float | None = None  # a moment more once complete, for duplicates
        while time.monotonic() < deadline:
            batches = await reader.getmany(timeout_ms=100)
            visible = time.time()
            for records in batches.values():
                for r in records:
                    seq = int(r.key)
                    result.counts[seq] += 1
                    if result.counts[seq] == 1 and seq >= timed_from:
                        result.latencies_ms.append((visible - orjson.loads(r.value)["sent"])
                                                   * 1000)
            if generating:
                deadline = max(deadline, time.monotonic() + cfg.drain)
            elif settle_until is None and len(result.counts) >= result.sent:
                settle_until = time.monotonic() + 0.5
            if settle_until is not None and time.monotonic() >= settle_until:
                return

    try:
        reader.assign([TopicPartition(spec.output_topic, p) for p in range(cfg.partitions)])
        await reader.seek_to_beginning()
        await asyncio.gather(generate(), read())
    finally:
        await producer.stop()
        await reader.stop()
    return result


def run_variant(bootstrap: str, variant: str, cfg: TxnBenchConfig) -> dict[str, Any]:
    """One variant on fresh topics: its loop in a spawned process, the load and the reader
    here. Bounded: the loop stops itself by its deadline, and is killed if it does not."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    run = f"txnbench-{uuid.uuid4().hex[:6]}-{variant}"
    spec = LoopSpec(variant, bootstrap, f"{run}.in", f"{run}.out", run, cfg.partitions,
                    deadline=time.time() + cfg.ready + cfg.duration + cfg.drain + STOP_S)
    asyncio.run(_create_topics(bootstrap, [spec.input_topic, spec.output_topic],
                               cfg.partitions))
    ctx = multiprocessing.get_context("spawn")  # no forked event loop or librdkafka threads
    ready, stop = ctx.Event(), ctx.Event()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=loop_main, args=(spec, ready, stop, sender), daemon=True,
                       name=f"bench-txn {variant}")
    proc.start()
    sender.close()
    try:
        until = time.monotonic() + cfg.ready
        while not ready.wait(0.2):
            if not proc.is_alive() or receiver.poll() or time.monotonic() > until:
                stats = receiver.recv() if receiver.poll() else {}
                raise RuntimeError(f"{variant}: the loop did not join its group within"
                                   f" {cfg.ready:.0f} s {stats.get('error', '')}".rstrip())
        reader = asyncio.run(_drive(bootstrap, spec, cfg))
        stop.set()
        stats = (receiver.recv() if receiver.poll(STOP_S)
                 else {"error": f"the loop did not stop within {STOP_S:.0f} s"})
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        receiver.close()
    return summarize(variant, reader, stats)


# -- the command -----------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TxnBenchConfig()
    p.add_argument("--partitions", type=int, default=d.partitions,
                   help=f"input (and output) partitions (default {d.partitions}, the router's)")
    p.add_argument("--rate", type=float, default=d.rate,
                   help=f"events/s offered (default {d.rate:.0f})")
    p.add_argument("--duration", type=float, default=d.duration,
                   help=f"seconds of load per variant (default {d.duration:.0f})")
    p.add_argument("--warmup", type=float, default=d.warmup,
                   help=f"first seconds of load checked but not timed (default {d.warmup:.0f})")
    p.add_argument("--variants", default=",".join(d.variants),
                   help=f"comma-separated, run in this order (default: {','.join(d.variants)})")
    p.add_argument("--broker", default=None, metavar="URL",
                   help="an existing Apache Kafka broker (kafka://host:port) instead of a fresh"
                        " local one; its topics are left behind")
    p.add_argument("--json", action="store_true", help="also print one JSON line")


def config_from_args(args: argparse.Namespace) -> TxnBenchConfig:
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"unknown variant(s) {', '.join(unknown) or '(none given)'};"
                         f" choose from {', '.join(VARIANTS)}")
    if args.partitions < 1 or args.rate <= 0 or args.duration <= 0 or args.warmup < 0:
        raise ValueError("--partitions, --rate and --duration must be positive")
    if args.warmup >= args.duration:
        raise ValueError("--warmup must be shorter than --duration")
    return TxnBenchConfig(partitions=args.partitions, rate=args.rate, duration=args.duration,
                          warmup=args.warmup, variants=variants)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_txn_bench(cfg: TxnBenchConfig, broker: str | None = None, as_json: bool = False,
                  workdir: Path = Path(".leadrouter")) -> int:
    """The `leadrouter bench-txn` command: 0 when every variant delivered exactly once."""
    from router.harness.brokers import BrokerError, KafkaBroker, describe
    from router.settings import bootstrap_servers

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    embedded: KafkaBroker | None = None
    results: list[dict[str, Any]] = []
    try:
        if broker is None:
            # Apache Kafka whatever LEADROUTER_LOCAL_BROKER says: Tansu has no transactions
            embedded = KafkaBroker(log_path=workdir / "bench-txn-broker.log").plan()
            print(f"bench-txn: starting the {describe(embedded)} ...", file=sys.stderr,
                  flush=True)
            embedded.start()
            bootstrap = embedded.bootstrap
        else:
            bootstrap = ",".join(bootstrap_servers(broker))
        for variant in cfg.variants:
            print(f"bench-txn: {variant} ...", file=sys.stderr, flush=True)
            try:
                results.append(run_variant(bootstrap, variant, cfg))
            except (RuntimeError, OSError) as exc:
                results.append(summarize(variant, ReaderResult(), {"error": str(exc)}))
    except BrokerError as exc:
        print(f"leadrouter bench-txn: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("leadrouter bench-txn: interrupted; the loops and the broker are stopped",
              file=sys.stderr)
        return 130
    finally:
        if embedded is not None:
            embedded.stop()
        signal.signal(signal.SIGTERM, previous)
    print(render_table(results, cfg), flush=True)
    if as_json:
        print(orjson.dumps({"bench": "txn_loop", "config": asdict(cfg),
                            "results": results}).decode(), flush=True)
    return 0 if all(exactly_once(r) for r in results) else 1
