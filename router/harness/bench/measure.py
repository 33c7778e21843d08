"""Measuring a bench phase: throughput from committed offsets, percentiles, RSS, CPU, state size.

Pure helpers are unit-tested in tests/unit/test_bench.py."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from router.adapters.tansu_quirks import fetch_end_offsets


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


async def loop_lag(lags_ms: list[float], until: float, interval: float = 0.005) -> None:
    """How late this event loop wakes a 5 ms sleeper, until `until` (monotonic s): the load
    generator shares its loop with the probes and the reader, so its own delay is inside every
    latency it measures."""
    while time.monotonic() < until:
        asked = time.monotonic()
        await asyncio.sleep(interval)
        lags_ms.append((time.monotonic() - asked - interval) * 1000)


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



_STARTED = [time.monotonic()]


def _log(text: str) -> None:
    print(f"[{time.monotonic() - _STARTED[0]:6.1f} s] {text}", file=sys.stderr, flush=True)



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
