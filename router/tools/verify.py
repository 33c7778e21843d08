"""`leadrouter verify`: an independent oracle for a run (SPEC §6).

Reads every input and output topic from the beginning, replays the inputs through the pure
rules offline, and checks the outputs after dropping repeated event ids:

1. qualification: each lead (in its first cycle) reached exactly the stage the rules call for
   (SQL iff the rules say SQL; MQL without SQL iff they say MQL); nothing else was emitted;
2. a repeated event id always carries the same decision (a replay never changed its mind);
3. every SQL ended assigned or queued; no lead has two `lead.assigned` in one cycle (a new rep
   only by `lead.reassigned`);
4. no rep above `max_open_leads` through round-robin along the assignment stream;
5. every assignment whose deadline has passed has an SLA outcome (met or breached) or was
   closed by sales first;
6. every dead letter names an input that exists, with its key.

Every missing output is also reported as a `Lost` entry naming its lead and the output that was
due (a stage's transition, an SQL's assignment or queueing, a hostile record's dead letter), so a
chaos run can say which leads a crash cost and look up their input records in the worker traces.
`strict=True` (exactly-once runs) reads `read_committed` and makes any repeated event id a
violation: every expected output must be there exactly once.

Why chaos passed while issue 12's runs lost leads: this oracle judges outcomes (a lead's final
stage, an SQL's routing), not records. A skipped input record is only visible when it changes an
outcome, and the chaos traffic (2,000 mostly cold leads, ~3 events each) makes most records
irrelevant to one; issue 12 tracked leads whose every record counts (measured: a kill-loop run
on Tansu skipped 276 input records and this oracle saw 4 lost outputs). The runs also had one
SIGKILL each, always of the same worker, where issue 12 saw losses in 2 of 6 runs of 2-5 kills.
`leadrouter chaos --trace` checks the records themselves against the workers' batch traces.

Order-dependent decisions (which rep, MQL-before-SQL) are checked for their invariants, not for
one exact order. Capacity is replayed with activity counted at its produce time, which is no
later than when the router applied it: the check can miss a violation but never invent one.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from router.adapters.topics import Topics
from router.adapters.wire import Refused, decode
from router.domain.events import LeadProfile, NamedAccount, Rep, Stage, Touchpoint
from router.domain.rules import Rules, load_rules
from router.settings import bootstrap_servers
from router.tools.history import (
    PROFILES,
    TOUCHPOINTS,
    HistoryRecord,
    M,
    latest_by_key,
    read_topic,
)
from router.tools.replay import decode_records, replay_events

ROUND_ROBIN_RULES = frozenset({"round_robin", "language_round_robin", "fallback",
                               "reassign_after_breach"})
CLOSING = frozenset({"accepted", "rejected", "disqualified", "converted", "released"})
SLA_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Lost:
    """An output the inputs call for that is not on its topic: which lead, which output."""

    lead: str
    expected: str  # "lead.sql", "lead.mql", "lead.assigned or lead.queued", "dead letter"
    detail: str = ""  # cycle, or the hostile record's topic[partition]@offset


@dataclass
class Report:
    counts: Counter[str] = field(default_factory=Counter)
    repeats: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lost: list[Lost] = field(default_factory=list)
    strict: bool = False

    def violation(self, text: str) -> None:
        self.violations.append(text)

    def lose(self, lead: str, expected: str, detail: str, text: str) -> None:
        """A missing output: a violation, and an entry of the by-lead loss report."""
        self.lost.append(Lost(lead, expected, detail))
        self.violation(text)

    def lost_by_lead(self) -> dict[str, list[Lost]]:
        out: dict[str, list[Lost]] = defaultdict(list)
        for entry in self.lost:
            out[entry.lead].append(entry)
        return dict(sorted(out.items()))

    def render(self) -> str:
        lines = ["leadrouter verify"]
        lines.append("  read: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())))
        lines.append("  repeated event ids dropped: "
                     + (", ".join(f"{k} {v}" for k, v in sorted(self.repeats.items()))
                        or "none"))
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.violations:
            lines.append(f"  VIOLATIONS ({len(self.violations)}):")
            lines.extend(f"    - {v}" for v in self.violations[:200])
        else:
            lines.append("  violations: 0")
        by_lead = self.lost_by_lead()  # every one, never truncated
        lines.append(f"  lost outputs: {len(self.lost)} of {len(by_lead)} leads")
        for lead, entries in by_lead.items():
            lines.append(f"    {lead}: " + "; ".join(
                f"{e.expected} ({e.detail})" if e.detail else e.expected for e in entries))
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "repeats_dropped": dict(self.repeats),
                "violations": len(self.violations), "lost": len(self.lost),
                "lost_leads": len(self.lost_by_lead()), "strict": self.strict}


def _dedupe(report: Report, name: str, records: list[HistoryRecord],
            decision_keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Drop repeated event ids (as consumers do), checking that a repeat decided the same."""
    seen: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for r in records:
        event = orjson.loads(r.value or b"{}")
        event["_ts"] = r.timestamp
        ident = event["event_id"]
        first = seen.get(ident)
        if first is None:
            seen[ident] = event
            out.append(event)
            continue
        report.repeats[name] += 1
        if report.strict:
            report.violation(f"{name}: {ident} repeated (exactly-once allows none)")
        changed = [k for k in decision_keys if first.get(k) != event.get(k)]
        if changed:
            report.violation(f"{name}: {ident} repeated with a different {', '.join(changed)}"
                             f" ({first.get(changed[0])!r} then {event.get(changed[0])!r})")
    report.counts[name] = len(out)
    return out


def _refused_inputs(letters: list[dict[str, Any]]) -> set[tuple[str, int, int]]:
    return {(d["source_topic"], d["partition"], d["offset"]) for d in letters}


def check_qualification(report: Report, rules: Rules, topics: Topics,
                        touchpoints: list[HistoryRecord],
                        profiles: list[HistoryRecord],
                        accounts: dict[str, NamedAccount], refused: set[tuple[str, int, int]],
                        transitions: list[dict[str, Any]]) -> None:
    recycled = {t["lead_id"] for t in transitions if t["type"] == "lead.recycled"}

    def not_dead_lettered(r: HistoryRecord, exc: Refused) -> None:
        where = f"{physical[r.topic]}[{r.partition}]@{r.offset}"
        report.lose((r.key or b"").decode("utf-8", "replace"), "dead letter", where,
                    f"{where}: refused by the rules but missing from the dead-letter topic")

    # the replay core reads logical topic names; dead letters name the prefixed ones
    logical = {topics.touchpoints: TOUCHPOINTS, topics.profiles: PROFILES}
    physical = {v: k for k, v in logical.items()}
    records = [HistoryRecord(logical[r.topic], r.partition, r.offset, r.timestamp, r.key,
                             r.value) for r in (*profiles, *touchpoints)]
    skip = {(logical[t], p, o) for t, p, o in refused if t in logical}
    ordered = decode_records(records, [rules], future_check=False, skip=skip,
                             on_refused=not_dead_lettered)
    inputs = [(when, kind, event) for when, kind, _, event in ordered
              if isinstance(event, LeadProfile | Touchpoint)]
    result = replay_events(ordered, [rules], lambda d: d in accounts, keep_states=True)
    states = result.states[0]
    by_lead: dict[str, list[str]] = defaultdict(list)
    for when, _, event in inputs:
        what = "profile" if isinstance(event, LeadProfile) else f"{event.type.value}"
        by_lead[event.lead_id].append(f"{what}@{datetime.fromtimestamp(when, UTC):%H:%M:%S}")
    observed: dict[str, set[str]] = defaultdict(set)
    for t in transitions:
        if t["cycle"] == 1:
            observed[t["lead_id"]].add(t["type"])
    checked = 0
    for lead, state in states.items():
        if lead in recycled:
            continue  # later cycles depend on sales activity timing; cycle 1 is checked below
        got = observed.get(lead, set())
        checked += 1
        if state.stage is not Stage.NEW and not got:
            report.notes.append(f"{lead} inputs: {', '.join(by_lead[lead][:12])}")
        if state.stage is Stage.SQL and "lead.sql" not in got:
            report.lose(lead, "lead.sql", "cycle 1",
                        f"{lead}: the rules call for SQL, no lead.sql was emitted")
        if state.stage is not Stage.SQL and "lead.sql" in got:
            report.violation(f"{lead}: lead.sql emitted, the rules say {state.stage.value}")
        if state.stage is Stage.MQL and "lead.mql" not in got:
            report.lose(lead, "lead.mql", "cycle 1",
                        f"{lead}: the rules call for MQL, no lead.mql was emitted")
        if state.stage is Stage.NEW and "lead.mql" in got:
            report.violation(f"{lead}: lead.mql emitted, the rules say new")
    for lead in observed:
        if lead not in states:
            report.violation(f"{lead}: transitions for a lead with no valid input")
    report.counts["leads checked against the rules"] = checked


DECAY_GRACE_SECONDS = 10.0


def check_decay(report: Report, rules: Rules, touchpoints: list[HistoryRecord],
                refused: set[tuple[str, int, int]], transitions: list[dict[str, Any]],
                now: float) -> None:
    """MQL decay (SPEC §2.2): every `decayed` recycle was an MQL (not SQL) of that cycle with
    no touchpoint, produced before the decay, inside the window that ended at it; and every
    MQL left in its stage has not outlived its deadline (newest touch or MQL, plus the window)
    by more than the grace."""
    window = rules.decay_seconds
    touches: dict[str, list[tuple[float, float]]] = defaultdict(list)  # (occurred, produced)
    for r in touchpoints:
        if (r.topic, r.partition, r.offset) in refused:
            continue
        try:
            tp = decode(Touchpoint, r.key, r.value, rules)
        except Refused:
            continue  # reported by check_qualification
        touches[tp.lead_id].append((tp.occurred_at.timestamp(), r.timestamp))
    stages: dict[tuple[str, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for t in transitions:
        stages[(t["lead_id"], t["cycle"])][t["type"]] = t
    decayed = 0
    for (lead, cycle), seen in sorted(stages.items()):
        recycled = seen.get("lead.recycled")
        if recycled is not None and recycled["criteria"].get("recycled_because") == "decayed":
            decayed += 1
            if window is None:
                report.violation(f"{recycled['event_id']}: decayed, but decay is switched off")
                continue
            if "lead.mql" not in seen or "lead.sql" in seen:
                report.violation(f"{recycled['event_id']}: decayed, but cycle {cycle} was not"
                                 " an MQL short of SQL")
            at, emitted = _ts(recycled["occurred_at"]), _ts(recycled["emitted_at"])
            # (times are written to the millisecond: 2 ms of slack at the window edge)
            # produced 2 s or more before the decay: the router had it (the touchpoint and
            # decay records travel on different topics, so closer ones may cross in flight)
            engaged = [o for o, produced in touches[lead]
                       if at - window + 0.002 < o < at and produced <= emitted - 2.0]
            if engaged:
                report.violation(f"{recycled['event_id']}: decayed at {recycled['occurred_at']}"
                                 f" although it engaged {at - max(engaged):.0f} s before")
        elif (window is not None and recycled is None and "lead.mql" in seen
              and "lead.sql" not in seen and (lead, cycle + 1) not in stages):
            newest = max((o for o, _ in touches[lead]), default=None)
            since = max(x for x in (newest, _ts(seen["lead.mql"]["occurred_at"]))
                        if x is not None)
            if since + window < now - DECAY_GRACE_SECONDS:
                report.violation(f"{lead} cycle {cycle}: MQL with no engagement since"
                                 f" {datetime.fromtimestamp(since, UTC):%Y-%m-%dT%H:%M:%SZ}"
                                 " should have decayed")
    report.counts["mqls decayed"] = decayed


def check_routing(report: Report, roster: dict[str, Rep], transitions: list[dict[str, Any]],
                  assignments: list[dict[str, Any]], activity: list[dict[str, Any]],
                  sla: list[dict[str, Any]], now: float) -> None:
    sqls = {(t["lead_id"], t["cycle"]) for t in transitions if t["type"] == "lead.sql"}
    outcome: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for a in assignments:
        outcome[(a["lead_id"], a["cycle"])].append(a)
    for key in sorted(sqls):
        if not outcome.get(key):
            report.lose(key[0], "lead.assigned or lead.queued", f"cycle {key[1]}",
                        f"{key[0]} cycle {key[1]}: lead.sql was never assigned or queued")
    for (lead, cycle), events in outcome.items():
        first_assignments = [e for e in events if e["type"] == "lead.assigned"]
        if len(first_assignments) > 1:
            report.violation(f"{lead} cycle {cycle}: {len(first_assignments)} lead.assigned")
    # capacity along the stream (round-robin only; owners may exceed by design)
    timeline: list[tuple[float, int, dict[str, Any]]] = []
    timeline += [(_ts(a["emitted_at"]), 1, a) for a in assignments]
    timeline += [(a["_ts"], 0, a) for a in activity]  # frees first on ties: conservative
    timeline.sort(key=lambda x: (x[0], x[1]))
    holder: dict[str, str] = {}
    open_leads: dict[str, set[str]] = defaultdict(set)
    # Outputs of one routing batch share emitted_at, and their order across the assignment
    # topic's partitions is lost: apply a batch's hand-overs (frees) before its takes, as the
    # router may have (a breach reassignment frees a slot that the next one in the tick uses).
    for (_, kind), group in itertools.groupby(timeline, key=lambda x: (x[0], x[1])):
        events = [e for _, _, e in group]
        if kind == 0:
            for e in events:
                if e.get("type") in CLOSING and holder.get(e["lead_id"]) == e.get("rep_id"):
                    open_leads[e["rep_id"]].discard(e["lead_id"])
            continue
        takes = [e for e in events if e["type"] != "lead.queued" and e["rep_id"]]
        for e in takes:
            previous = holder.get(e["lead_id"])
            if previous is not None:
                open_leads[previous].discard(e["lead_id"])
        for e in takes:
            holder[e["lead_id"]] = e["rep_id"]
            open_leads[e["rep_id"]].add(e["lead_id"])
        for e in takes:
            rep = roster.get(e["rep_id"])
            count = len(open_leads[e["rep_id"]])
            if rep is not None and e["rule"] in ROUND_ROBIN_RULES and count > rep.max_open_leads:
                report.violation(f"{e['event_id']}: {e['rep_id']} at {count}/"
                                 f"{rep.max_open_leads} open"
                                 f" ({', '.join(sorted(open_leads[e['rep_id']]))})")
    # SLA outcomes
    outcomes = {(s["lead_id"], s["cycle"], _seq(s["event_id"])) for s in sla
                if s["type"] in ("sla.met", "sla.breached")}
    # A queued lead's clock runs from the queueing (SPEC §5): when it breaches while queued, the
    # assignment that follows keeps that deadline and its outcome carries the queue's clock
    # number, not the assignment's (found by the Tansu kill loop, seed 3004).
    outcomes_by_due = {(s["lead_id"], s["cycle"], _ts(s["due_at"])) for s in sla
                       if s["type"] in ("sla.met", "sla.breached") and s.get("due_at")}
    closed_at: dict[str, float] = {}
    for a in activity:
        if a.get("type") in CLOSING or a.get("type") == "first_touch":
            closed_at.setdefault(a["lead_id"], a["_ts"])
    for a in assignments:
        if a["type"] == "lead.queued":
            continue
        due = _ts(a["sla"]["due_at"])
        seq = int(a["event_id"].rsplit(":", 1)[1])
        if due > now - SLA_GRACE_SECONDS or (a["lead_id"], a["cycle"], seq) in outcomes:
            continue
        if (a["lead_id"], a["cycle"], due) in outcomes_by_due:
            continue
        if closed_at.get(a["lead_id"], float("inf")) <= due:
            continue
        report.violation(f"{a['event_id']}: deadline {a['sla']['due_at']} passed without"
                         " sla.met or sla.breached")
    report.counts["assignments with SLA checked"] = sum(
        1 for a in assignments if a["type"] != "lead.queued")


def check_dead_letters(report: Report, letters: list[dict[str, Any]],
                       inputs: dict[str, dict[tuple[int, int], bytes | None]]) -> None:
    for d in letters:
        source = inputs.get(d["source_topic"])
        if source is None:
            report.violation(f"dead letter names unknown topic {d['source_topic']}")
            continue
        key = source.get((d["partition"], d["offset"]), b"<missing>")
        if key == b"<missing>":
            report.violation(f"dead letter names {d['source_topic']}[{d['partition']}]"
                             f"@{d['offset']}, which does not exist")
        elif (key.decode("utf-8", "replace") if key is not None else None) != d["key"]:
            report.violation(f"dead letter for {d['source_topic']}@{d['offset']}: key differs")




def _latest(report: Report, records: list[HistoryRecord], model: type[M],
            rules: Rules) -> dict[str, M]:
    """The compacted topic's final content; invalid records become notes of the report."""
    return latest_by_key(records, model, rules, lambda r, key: report.notes.append(
        f"{r.topic} record {key!r} is invalid and was ignored"))


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _seq(event_id: str) -> int:
    # L-1:c1:sla:2:breached -> 2
    return int(event_id.rsplit(":", 2)[1])


async def verify(broker: str, prefix: str, rules: Rules, strict: bool = False) -> Report:
    """`strict`: exactly-once runs (read_committed, no repeated event id at all)."""
    bootstrap = bootstrap_servers(broker)
    topics = Topics.with_prefix(prefix)
    names = [topics.touchpoints, topics.profiles, topics.reps, topics.accounts,
             topics.activity, topics.transitions, topics.assignments, topics.sla,
             topics.deadletter]
    isolation = "read_committed" if strict else "read_uncommitted"
    raw = dict(zip(names, await asyncio.gather(*(
        read_topic(bootstrap, n, isolation_level=isolation) for n in names)), strict=True))
    report = Report(strict=strict)
    for name in names[:5]:
        report.counts[name] = len(raw[name])
    letters = [orjson.loads(r.value) for r in raw[topics.deadletter] if r.value is not None]
    report.counts[topics.deadletter] = len(letters)
    transitions = _dedupe(report, topics.transitions, raw[topics.transitions],
                          ("type", "lead_id", "cycle", "to_stage"))
    assignments = _dedupe(report, topics.assignments, raw[topics.assignments],
                          ("type", "lead_id", "cycle", "rep_id"))
    sla = _dedupe(report, topics.sla, raw[topics.sla], ("type", "lead_id", "rep_id"))
    roster = _latest(report, raw[topics.reps], Rep, rules)
    accounts = _latest(report, raw[topics.accounts], NamedAccount, rules)
    activity = []
    for r in raw[topics.activity]:
        try:
            event = orjson.loads(r.value or b"null")
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("lead_id"), str):
            event["_ts"] = r.timestamp
            activity.append(event)
    refused = _refused_inputs(letters)
    check_qualification(report, rules, topics, raw[topics.touchpoints], raw[topics.profiles],
                        accounts, refused, transitions)
    check_routing(report, roster, transitions, assignments, activity, sla, time.time())
    inputs = {name: {(r.partition, r.offset): r.key for r in raw[name]}
              for name in (topics.touchpoints, topics.profiles, topics.activity)}
    check_dead_letters(report, letters, inputs)
    check_decay(report, rules, raw[topics.touchpoints], refused, transitions, time.time())
    report.notes.append("accounts are taken at their final state; a named account added or"
                        " removed during the run can make ABM leads differ")
    return report


def run_verify(broker: str, prefix: str, rules_path: str | None, as_json: bool,
               strict: bool = False) -> int:
    rules = load_rules(rules_path)
    report = asyncio.run(verify(broker, prefix, rules, strict))
    print(report.render())
    if as_json:
        print(orjson.dumps({"verify": report.summary()}).decode())
    return 1 if report.violations else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_verify(sys.argv[1], "", None, True))
