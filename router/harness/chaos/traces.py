"""Trace forensics: which input records of a lost lead never reached the worker.

With `--trace` the workers run with LEADROUTER_TRACE=1 and JSON logs. Two trace lines are read
(the partition processor, router/worker/pipeline, writes them):

  {"logger": "router.trace", "msg": "batch", "agent": "qualify", "generation": 7,
   "ranges": {"<prefix>leads.touchpoints[3]": "410-437/28", ...}, "dropped": 0}
  {"logger": "router.trace", "msg": "commit", "ok": true, "generation": 7,
   "offsets": {"<prefix>leadrouter-routing[0]": 29, ...}}

A batch line says the records first..last of a partition were handed to the agent ("reached");
`dropped` > 0 means some of the batch belonged to revoked partitions and was not processed, and
the line does not say which: such ranges count as "reached, maybe dropped". The guards'
warnings and errors that name a partition ("fetch skipped records ...", "partition stopped
committing ...") are printed for the lost leads' partitions. The faust worker traced only its
qualify agent, so for its routing topic the reader can only say whether a commit went past the
record; the partition processor (router/worker/pipeline) traces every stage. A record that
reached the agent can still have been lost later (a crash before its outputs); one that never
reached it was skipped by the consumer.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from router.tools.history import HistoryRecord, read_topic

if TYPE_CHECKING:
    from router.harness.chaos.session import ChaosRun
    from router.tools.verify import Report


TRACE_LAG_SECONDS = 3.0


@dataclass(frozen=True)
class TracedRange:
    source: str  # worker log name
    generation: int | None
    first: int
    last: int
    clean: bool  # the batch dropped nothing


@dataclass
class Traces:
    """Batch ranges and successful commits per partition ("topic[p]"), from worker logs."""

    ranges: dict[str, list[TracedRange]] = field(default_factory=lambda: defaultdict(list))
    commits: dict[str, list[tuple[int, str, int | None]]] = field(
        default_factory=lambda: defaultdict(list))
    # the worker's guards on a partition: "fetch skipped records ...", "partition stopped
    # committing ..." (warnings and errors naming a `partition`), as (time, log, text)
    guards: dict[str, list[tuple[str, str, str]]] = field(
        default_factory=lambda: defaultdict(list))
    batches: int = 0

    def add_line(self, line: str, source: str) -> None:
        if '"router.trace"' not in line and '"partition"' not in line:
            return
        try:
            entry: Any = orjson.loads(line)
        except orjson.JSONDecodeError:
            return
        if not isinstance(entry, dict):
            return
        if entry.get("level") in ("warning", "error") and isinstance(entry.get("partition"), str):
            detail = ", ".join(f"{k} {v}" for k, v in entry.items()
                               if k not in ("ts", "level", "logger", "msg", "partition"))
            self.guards[entry["partition"]].append(
                (str(entry.get("ts", ""))[11:23], source, f"{entry.get('msg')} ({detail})"))
            return
        if entry.get("logger") != "router.trace":
            return
        generation = entry.get("generation")
        if entry.get("msg") == "batch" and isinstance(entry.get("ranges"), dict):
            self.batches += 1
            clean = not entry.get("dropped")
            for tp, text in entry["ranges"].items():
                span, _, _ = str(text).partition("/")
                first, _, last = span.partition("-")
                self.ranges[tp].append(TracedRange(source, generation, int(first), int(last),
                                                   clean))
        elif entry.get("msg") == "commit" and entry.get("ok") and isinstance(
                entry.get("offsets"), dict):
            for tp, offset in entry["offsets"].items():
                if isinstance(offset, int):
                    self.commits[tp].append((offset, source, generation))

    def status(self, tp: str, offset: int, traced: bool = True) -> str:
        """What the traces say about one record: reached the agent (where), or not.
        `traced`: the agent consuming this topic writes batch traces."""
        hits = [r for r in self.ranges.get(tp, []) if r.first <= offset <= r.last]
        if any(r.clean for r in hits):
            r = next(r for r in hits if r.clean)
            return f"reached the agent ({r.source}, generation {r.generation})"
        if hits:
            return "reached the agent only in batches that dropped revoked records"
        commits = self.commits.get(tp, [])
        over = [c for c in commits if c[0] > offset]
        below = [c for c in commits if c[0] <= offset]
        committed = ""
        if over:
            c = min(over)
            committed = f"; committed over (to {c[0]}, {c[1]}, generation {c[2]}"
            if below:
                b = max(below)
                committed += f"; the commit before was {b[0]}, {b[1]}, generation {b[2]}"
            committed += ")"
        if traced:
            return "NEVER reached the agent" + committed
        return "not traced (no batch trace for this partition)" + committed

    def unreached(self, records: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """The (topic[p], offset) of `records` (of traced topics) no traced batch covers."""
        spans: dict[str, tuple[list[int], list[int]]] = {}
        for tp, ranges in self.ranges.items():
            merged: list[list[int]] = []
            for r in sorted(ranges, key=lambda r: r.first):
                if merged and r.first <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], r.last)
                else:
                    merged.append([r.first, r.last])
            spans[tp] = ([m[0] for m in merged], [m[1] for m in merged])
        out = []
        for tp, offset in records:
            firsts, lasts = spans.get(tp, ([], []))
            i = bisect.bisect_right(firsts, offset) - 1
            if i < 0 or lasts[i] < offset:
                out.append((tp, offset))
        return out


def read_traces(logs: Iterable[Path]) -> Traces:
    traces = Traces()
    for path in logs:
        with open(path, errors="replace") as f:
            for line in f:
                traces.add_line(line, path.name)
    return traces


def _tp(r: HistoryRecord) -> str:
    return f"{r.topic}[{r.partition}]"


async def explain_losses(report: Report, run: ChaosRun, bootstrap: str,
                         strict: bool = False) -> str:
    """For each lead with a lost output, its input records (topic[partition]@offset) and what
    the traces say about each; first, how many input records of the run never reached an agent
    at all (lost or not: most skipped records change no outcome). Sets `run.unreached`.
    `strict` (exactly-once) reads read_committed: a record of an aborted transaction is one a
    read_committed worker must never get, not one it skipped."""
    topics = run.topics
    names = [topics.touchpoints, topics.profiles, topics.routing]
    records: list[HistoryRecord] = []
    for name in names:
        records += await read_topic(bootstrap.split(","), name, isolation_level=(
            "read_committed" if strict else "read_uncommitted"))
    # the routing topic keeps getting clock ticks: read the traces after the records, once the
    # workers have had time to take the newest, or those would look skipped
    await asyncio.sleep(TRACE_LAG_SECONDS)
    traces = read_traces(sorted(run.workdir.glob("worker-*.log")))
    lines = [f"trace forensics ({traces.batches} traced batches in {run.workdir}):"]
    if not traces.batches:
        lines.append("  no batch traces in the worker logs: nothing to say per record")
        return "\n".join(lines)
    routing_traced = any(tp.startswith(topics.routing + "[") for tp in traces.ranges)
    qualify_inputs = [(_tp(r), r.offset) for r in records
                      if r.topic != topics.routing or routing_traced]
    unreached = traces.unreached(qualify_inputs)
    run.unreached = len(unreached)
    per_tp: dict[str, list[int]] = defaultdict(list)
    for tp, offset in unreached:
        per_tp[tp].append(offset)
    lines.append(f"  input records that never reached a traced stage: {len(unreached)} of"
                 f" {len(qualify_inputs)}"
                 + "".join(f"; {tp} @{_offsets(o)}" for tp, o in sorted(per_tp.items())))
    by_key: dict[str, list[HistoryRecord]] = defaultdict(list)
    for r in records:
        by_key[(r.key or b"").decode("utf-8", "replace")].append(r)
    lost_tps: set[str] = set()
    for lead, entries in report.lost_by_lead().items():
        lines.append(f"  {lead} lost " + "; ".join(e.expected for e in entries) + ":")
        for r in sorted(by_key.get(lead, []), key=lambda r: (r.topic, r.partition, r.offset)):
            status = traces.status(_tp(r), r.offset,
                                   traced=r.topic != topics.routing or routing_traced)
            lines.append(f"    {_tp(r)}@{r.offset}: {status}")
            lost_tps.add(_tp(r))
    for tp in sorted(lost_tps):  # what the worker's guards said on the lost leads' partitions
        for at, source, text in traces.guards.get(tp, []):
            lines.append(f"  guard on {tp} at {at} ({source}): {text}")
    return "\n".join(lines)


def _offsets(offsets: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5,9'."""
    out: list[str] = []
    for o in sorted(offsets):
        if out and out[-1].split("-")[-1] == str(o - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{o}"
        else:
            out.append(str(o))
    return ",".join(out)
