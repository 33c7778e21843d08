"""History: the records of a time range, read from a broker (bounded) or from an NDJSON export.

One record type for both sources, so the replay, the simulator and the report never care where
the history came from. Topic names are kept without the deployment's prefix ("leads.touchpoints"),
so an export taken from one deployment replays against any other.

The NDJSON format is one header line and then one line per record:

    {"leadrouter_history": 1, "from": "...", "to": "...", "exported_at": "...", "topics": [...]}
    {"topic": "leads.touchpoints", "partition": 0, "offset": 12, "timestamp": 1800000000123,
     "key": "L-1001", "value": "{\\"event_id\\": ...}"}

Values are kept as the exact text that was on the broker (not re-encoded JSON), so a replay of an
export refuses the same inputs, for the same reasons, as a replay of the topics would.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from router.adapters.tansu_quirks import fetch_end_offsets
from router.adapters.wire import Refused, decode
from router.domain.events import NamedAccount, Rep, format_rfc3339
from router.domain.rules import Rules
from router.settings import bootstrap_servers

FORMAT_VERSION = 1

TOUCHPOINTS = "leads.touchpoints"
PROFILES = "leads.profiles"
REPS = "routing.reps"
ACCOUNTS = "routing.accounts"
ACTIVITY = "sales.activity"
TRANSITIONS = "leads.transitions"
ASSIGNMENTS = "leads.assignments"
SLA = "leads.sla"
DEADLETTER = "leads.deadletter"

INPUT_TOPICS = (TOUCHPOINTS, PROFILES, REPS, ACCOUNTS, ACTIVITY)
OUTPUT_TOPICS = (TRANSITIONS, ASSIGNMENTS, SLA)
# the roster and the ABM list are state, not events: always read whole, whatever the range
STATE_TOPICS = frozenset({REPS, ACCOUNTS})


class HistoryError(ValueError):
    """A history that cannot be read (bad file, bad range): the message says what to fix."""


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    topic: str  # logical name, without the deployment's prefix
    partition: int
    offset: int
    timestamp: float  # broker timestamp, epoch seconds
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: float | None  # epoch seconds; None: from the beginning
    end: float | None  # None: up to the end offsets taken when reading starts

    def contains(self, ts: float) -> bool:
        return (self.start is None or ts >= self.start) and (self.end is None or ts < self.end)

    def describe(self) -> str:
        def show(ts: float | None, default: str) -> str:
            return format_rfc3339(datetime.fromtimestamp(ts, UTC)) if ts is not None else default

        return f"{show(self.start, 'the beginning')} to {show(self.end, 'now')}"


@dataclass
class History:
    records: dict[str, list[HistoryRecord]] = field(default_factory=dict)
    range: TimeRange = TimeRange(None, None)
    source: str = ""

    def topic(self, name: str) -> list[HistoryRecord]:
        return self.records.get(name, [])

    def count(self) -> int:
        return sum(len(r) for r in self.records.values())


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '90m', '2w' -> a timedelta."""
    match = _DURATION.match(text)
    if match is None:
        raise HistoryError(f"--since {text!r}: expected a number and a unit, e.g. 30d, 12h, 2w")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def parse_time(text: str, flag: str) -> float:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise HistoryError(f"{flag} {text!r}: expected an RFC 3339 time such as"
                           " 2026-11-01T00:00:00Z") from None
    if parsed.tzinfo is None:
        raise HistoryError(f"{flag} {text!r}: add a UTC offset (Z or +hh:mm)")
    return parsed.timestamp()


def time_range(since: str | None, start: str | None, end: str | None,
               now: float | None = None) -> TimeRange:
    """The range asked for on the command line: `--since 30d`, or `--from T [--to T]`."""
    if since is not None and start is not None:
        raise HistoryError("give either --since or --from, not both")
    now = time.time() if now is None else now
    lo = now - parse_duration(since).total_seconds() if since is not None else (
        parse_time(start, "--from") if start is not None else None)
    hi = parse_time(end, "--to") if end is not None else None
    if lo is not None and hi is not None and hi <= lo:
        raise HistoryError("--to must be after the start of the range")
    return TimeRange(lo, hi)


# --------------------------------------------------------------------------------------------
# NDJSON
# --------------------------------------------------------------------------------------------


def _text(data: bytes | None, name: str, out: dict[str, Any]) -> None:
    if data is None:
        out[name] = None
        return
    try:
        out[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        out[name + "_b64"] = base64.b64encode(data).decode("ascii")


def record_line(r: HistoryRecord) -> bytes:
    # "topic" and "key" first: a reader can pick a lead's lines without parsing the value
    out: dict[str, Any] = {"topic": r.topic}
    _text(r.key, "key", out)
    out.update(partition=r.partition, offset=r.offset, timestamp=round(r.timestamp * 1000))
    _text(r.value, "value", out)
    return orjson.dumps(out) + b"\n"


def write_ndjson(history: History, out: IO[bytes], topics: Sequence[str]) -> int:
    """Header line, then every record of `topics`; returns the number of records written."""
    rng = history.range
    header = {
        "leadrouter_history": FORMAT_VERSION,
        "from": format_rfc3339(datetime.fromtimestamp(rng.start, UTC)) if rng.start else None,
        "to": format_rfc3339(datetime.fromtimestamp(rng.end, UTC)) if rng.end else None,
        "exported_at": format_rfc3339(datetime.now(UTC)),
        "source": history.source,
        "topics": list(topics),
    }
    out.write(orjson.dumps(header) + b"\n")
    written = 0
    for name in topics:
        for r in history.topic(name):
            out.write(record_line(r))
            written += 1
    return written


def _field(raw: dict[str, Any], name: str) -> bytes | None:
    if name + "_b64" in raw:
        return base64.b64decode(raw[name + "_b64"])
    value = raw.get(name)
    return value.encode() if isinstance(value, str) else None


def parse_record(line: bytes) -> HistoryRecord:
    raw = orjson.loads(line)
    return HistoryRecord(raw["topic"], raw["partition"], raw["offset"],
                         raw["timestamp"] / 1000.0, _field(raw, "key"), _field(raw, "value"))


def iter_ndjson(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line


def read_ndjson(path: str | Path, wanted: Iterable[str] | None = None) -> History:
    """Load an export (`leadrouter export`); errors name the file and the line."""
    file = Path(path)
    if not file.exists():
        raise HistoryError(f"{file}: no such file (write one with `leadrouter export`)")
    want = set(wanted) if wanted is not None else None
    history = History(source=str(file))
    lines = iter_ndjson(file)
    try:
        number, first = next(lines)
    except StopIteration:
        raise HistoryError(f"{file}: empty file") from None
    try:
        header = orjson.loads(first)
    except orjson.JSONDecodeError as exc:
        raise HistoryError(f"{file}:{number}: not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("leadrouter_history") != FORMAT_VERSION:
        raise HistoryError(f"{file}:{number}: not a leadrouter history export (the first line"
                           f" must carry \"leadrouter_history\": {FORMAT_VERSION})")
    start = parse_time(header["from"], "from") if header.get("from") else None
    end = parse_time(header["to"], "to") if header.get("to") else None
    history.range = TimeRange(start, end)
    for number, line in lines:
        try:
            r = parse_record(line)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise HistoryError(f"{file}:{number}: not a history record: {exc}") from None
        if want is None or r.topic in want:
            history.records.setdefault(r.topic, []).append(r)
    return history


def restrict(history: History, rng: TimeRange, warmup: float = 0.0) -> History:
    """The records of `rng` (state topics whole; event topics from `warmup` s before it)."""
    if rng.start is None and rng.end is None:
        return history
    start = rng.start - warmup if rng.start is not None else None
    wide = TimeRange(start, rng.end)
    out = History(range=rng, source=history.source)
    for name, records in history.records.items():
        out.records[name] = records if name in STATE_TOPICS else [
            r for r in records if wide.contains(r.timestamp)]
    return out


# --------------------------------------------------------------------------------------------
# Broker
# --------------------------------------------------------------------------------------------


async def read_topic(bootstrap: list[str], topic: str, start: float | None = None,
                     timeout: float = 120.0, isolation_level: str = "read_uncommitted",
                     client: dict[str, Any] | None = None) -> list[HistoryRecord]:
    """Every record of `topic` from `start` (epoch s) up to the end offsets taken first: a
    bounded read, so a topic that keeps growing (a live deployment) still finishes.
    `read_committed` (exactly-once checks) stops at the last stable offset instead."""
    # "earliest", not aiokafka's "latest": assign() starts a default reset in the background,
    # and if its ListOffsets is still in flight when seek_to_beginning() asks for the beginning,
    # its answer (the end) is taken as the position, so the read found nothing to read
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=100, max_partition_fetch_bytes=8 << 20,
                                auto_offset_reset="earliest",
                                isolation_level=isolation_level, **(client or {}))
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)  # before any await gives the reset a chance
        ends = (await consumer.end_offsets(tps) if isolation_level == "read_committed"
                else await fetch_end_offsets(bootstrap, tps))
        if start is not None:
            try:
                found = await consumer.offsets_for_times({tp: int(start * 1000) for tp in tps})
                for tp, at in found.items():
                    if at is None:
                        consumer.seek(tp, ends[tp])  # nothing at or after `start`
                    else:
                        consumer.seek(tp, at.offset)
            except Exception:
                await consumer.seek_to_beginning(*tps)
        pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        out: list[HistoryRecord] = []
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end offsets within"
                                   f" {timeout:.0f} s")
            batches = await consumer.getmany(*pending, timeout_ms=300, max_records=50_000)
            for tp, records in batches.items():
                for r in records:
                    if r.offset < ends[tp]:
                        out.append(HistoryRecord(topic, r.partition, r.offset,
                                                 r.timestamp / 1000.0, r.key, r.value))
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        if start is not None:
            out = [r for r in out if r.timestamp >= start]
        return out
    finally:
        await consumer.stop()


async def read_broker(broker: str, prefix: str, wanted: Sequence[str], rng: TimeRange,
                      warmup: float = 0.0) -> History:
    """Read `wanted` (logical names) under `prefix`, in parallel, each bounded at its end."""
    bootstrap = bootstrap_servers(broker)
    start = rng.start - warmup if rng.start is not None else None
    physical = [f"{prefix}{name}" for name in wanted]
    results = await asyncio.gather(*(
        read_topic(bootstrap, name, None if logical in STATE_TOPICS else start)
        for name, logical in zip(physical, wanted, strict=True)))
    history = History(range=rng, source=f"{broker} (prefix {prefix!r})")
    for logical, records in zip(wanted, results, strict=True):
        if rng.end is not None and logical not in STATE_TOPICS:
            records = [r for r in records if r.timestamp < rng.end]
        history.records[logical] = [
            HistoryRecord(logical, r.partition, r.offset, r.timestamp, r.key, r.value)
            for r in records]
    return history


def load_history(history_file: str | None, broker: str, prefix: str, wanted: Sequence[str],
                 rng: TimeRange, warmup: float = 0.0) -> History:
    """From `--history FILE` when given, else from the broker."""
    if history_file is not None:
        history = read_ndjson(history_file, wanted)
        if rng.start is None and rng.end is None:
            return history
        return restrict(history, rng, warmup)
    return asyncio.run(read_broker(broker, prefix, wanted, rng, warmup))


M = TypeVar("M", Rep, NamedAccount)


def latest_by_key(records: Iterable[HistoryRecord], model: type[M], rules: Rules,
                  on_invalid: Callable[[HistoryRecord, str], None] | None = None
                  ) -> dict[str, M]:
    """What a compacted topic (roster, named accounts) finally holds: the newest valid value
    per key, tombstones removed. A key lives on one partition, so its order is the offset
    order there; an invalid record is skipped (and reported to `on_invalid`), as the worker
    ignores it."""
    out: dict[str, M] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        key = (r.key or b"").decode("utf-8", "replace")
        if r.value is None:
            out.pop(key, None)
            continue
        try:
            out[key] = decode(model, None, r.value, rules)
        except Refused:
            if on_invalid is not None:
                on_invalid(r, key)
    return out
