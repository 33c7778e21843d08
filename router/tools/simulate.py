"""`leadrouter simulate`: a candidate rules file replayed on history beside the current one.

Both rule sets see the same inputs in the same order (router.tools.replay), so every difference
in the figures is the rules'. Routing is simulated too, with the pure router.domain.routing
functions over the roster as it changed in the history: each lead is held for as long as it
was held in history (until sales' first accept, reject, disqualify, convert or release after it
was assigned). A lead that sales never saw (the candidate adds it) is held for the median of the
holds observed. Nothing is written to any topic.
"""

from __future__ import annotations

import heapq
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from router.adapters.wire import Refused, decode
from router.domain.events import NamedAccount, Rep, SalesActivity, format_rfc3339
from router.domain.routing import CLOSING_ACTIVITY, NeedsCache, drain_queues, route
from router.domain.routing_state import Decision, RoutingState
from router.domain.rules import Rules, RulesError, load_rules
from router.gc_tuning import bulk_work
from router.tools.history import (
    ACCOUNTS,
    ACTIVITY,
    ASSIGNMENTS,
    INPUT_TOPICS,
    PROFILES,
    REPS,
    TOUCHPOINTS,
    History,
    HistoryError,
    HistoryRecord,
    TimeRange,
    latest_by_key,
    load_history,
    time_range,
)
from router.tools.replay import RANK_STAGE, Decided, ReplayResult, default_workers, replay

SAMPLE = 25
HOLDING = frozenset({"lead.assigned", "lead.reassigned"})


@dataclass
class SalesHistory:
    """What sales did with each lead in the history: closing times and the verdicts."""

    closes: dict[str, list[float]] = field(default_factory=dict)
    verdicts: dict[str, list[SalesActivity]] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: Sequence[HistoryRecord], rules: Rules) -> SalesHistory:
        out = cls()
        seen: set[str] = set()
        for r in records:
            try:
                a = decode(SalesActivity, r.key, r.value, rules)
            except Refused:
                continue
            if a.event_id in seen:
                continue
            seen.add(a.event_id)
            out.verdicts.setdefault(a.lead_id, []).append(a)
            if a.type in CLOSING_ACTIVITY:
                out.closes.setdefault(a.lead_id, []).append(a.occurred_at.timestamp())
        for times in out.closes.values():
            times.sort()
        return out

    def judgement(self, lead_id: str) -> str:
        """One word for how sales judged the lead: its strongest verdict in the history."""
        kinds = {a.type.value: a for a in self.verdicts.get(lead_id, [])}
        for kind in ("converted", "accepted"):
            if kind in kinds:
                return kind
        if "rejected" in kinds:
            reason = kinds["rejected"].reason
            return f"rejected: {reason.value if reason else 'other'}"
        for kind in ("disqualified", "released"):
            if kind in kinds:
                return kind
        return "touched, no verdict" if "first_touch" in kinds else "no feedback"

    def close_after(self, lead_id: str, ts: float) -> float | None:
        for close in self.closes.get(lead_id, ()):
            if close >= ts:
                return close
        return None


def not_holder_activity(activity: Sequence[HistoryRecord],
                        assignments: Sequence[HistoryRecord]) -> frozenset[tuple[str, int, int]]:
    """Sales activity the router refused as `not_holder`: from a rep who was not the lead's
    latest assignee when the record arrived, or on a lead nobody held.

    The routing stage dead-letters these before qualification sees them, so a replay that
    recycled on them would invent a recycle the live router never made (a rejection sent by
    the first rep after an SLA breach had reassigned the lead is the common case). Judged by
    record time: the router reads both topics in that order. Empty when the history carries
    no assignments (an inputs-only export): then every rejection and release counts."""
    if not assignments:
        return frozenset()
    holders: dict[str, list[tuple[float, int, str | None]]] = {}
    for r in assignments:
        try:
            raw = orjson.loads(r.value or b"null")
        except orjson.JSONDecodeError:
            continue
        if isinstance(raw, dict) and raw.get("type") in HOLDING:
            holders.setdefault(str(raw.get("lead_id")), []).append(
                (r.timestamp, r.offset, raw.get("rep_id")))
    for changes in holders.values():
        changes.sort()
    out = set()
    for r in activity:
        try:
            raw = orjson.loads(r.value or b"null")
        except orjson.JSONDecodeError:
            continue
        if not isinstance(raw, dict):
            continue
        holder = None
        for at, _, rep in holders.get(str(raw.get("lead_id")), ()):
            if at > r.timestamp:
                break
            holder = rep
        if holder is None or holder != raw.get("rep_id"):
            out.add((r.topic, r.partition, r.offset))
    return frozenset(out)


@dataclass
class RoutingOutcome:
    assigned_by_pool: Counter[str] = field(default_factory=Counter)
    assigned_by_rep: Counter[str] = field(default_factory=Counter)
    sql_by_pool: Counter[str] = field(default_factory=Counter)
    peak_open: dict[str, int] = field(default_factory=dict)
    queued: int = 0
    queued_leads: list[str] = field(default_factory=list)
    still_queued: int = 0
    queue_seconds: list[float] = field(default_factory=list)
    holds: list[float] = field(default_factory=list)


def _rep_updates(records: Sequence[HistoryRecord], rules: Rules
                 ) -> list[tuple[float, str, Rep | None]]:
    out: list[tuple[float, str, Rep | None]] = []
    for r in sorted(records, key=lambda r: (r.timestamp, r.offset)):
        key = (r.key or b"").decode("utf-8", "replace")
        if r.value is None:
            out.append((r.timestamp, key, None))
            continue
        try:
            out.append((r.timestamp, key, decode(Rep, None, r.value, rules)))
        except Refused:
            continue
    return out


def simulate_routing(sqls: Sequence[tuple[float, Decided]],
                     rep_updates: Sequence[tuple[float, str, Rep | None]],
                     accounts: Mapping[str, NamedAccount], rules: Rules, sales: SalesHistory,
                     default_hold: float | None, end: float) -> RoutingOutcome:
    """Route every SQL (with the time the router would have seen it) in time order; free each
    slot when the history says sales let go."""
    out = RoutingOutcome()
    state = RoutingState()
    roster: dict[str, Rep] = {}
    updates = list(rep_updates)
    u = 0
    frees: list[tuple[float, str, int]] = []  # (when, lead, cycle)
    queued_at: dict[str, float] = {}
    needs = NeedsCache(accounts, rules)  # both stay the same for the whole simulation

    def advance_roster(ts: float) -> None:
        nonlocal u
        while u < len(updates) and updates[u][0] <= ts:
            _, rep_id, rep = updates[u]
            if rep is None:
                roster.pop(rep_id, None)
            else:
                roster[rep_id] = rep
            u += 1

    def taken(decisions: Sequence[Decision], ts: float) -> None:
        for d in decisions:
            if d.type == "lead.queued":
                out.queued += 1
                queued_at[d.lead_id] = ts
                if len(out.queued_leads) < SAMPLE:
                    out.queued_leads.append(d.lead_id)
                out.sql_by_pool[d.pool] += 1
                continue
            assert d.rep_id is not None
            out.assigned_by_pool[d.pool] += 1
            out.assigned_by_rep[d.rep_id] += 1
            if d.lead_id in queued_at:
                out.queue_seconds.append(ts - queued_at.pop(d.lead_id))
            else:
                out.sql_by_pool[d.pool] += 1
            count = state.open_count(d.rep_id)
            out.peak_open[d.rep_id] = max(out.peak_open.get(d.rep_id, 0), count)
            close = sales.close_after(d.lead_id, ts)
            if close is None and d.lead_id not in sales.closes and default_hold is not None:
                close = ts + default_hold
            if close is not None:
                out.holds.append(close - ts)
                heapq.heappush(frees, (close, d.lead_id, d.cycle))

    def release_until(ts: float) -> None:
        while frees and frees[0][0] <= ts:
            when, lead, cycle = heapq.heappop(frees)
            held = state.holdings.get(lead)
            if held is None or held.cycle != cycle or not held.open:
                continue
            advance_roster(when)
            state.close(lead, "released in history")
            now = datetime.fromtimestamp(when, UTC)
            taken(drain_queues(roster, accounts, state, rules, now, needs), when)

    for ts, d in sqls:
        assert d.request is not None
        release_until(ts)
        advance_roster(ts)
        now = datetime.fromtimestamp(ts, UTC)
        # as in the router, queues drain when a slot frees (above), not on every new SQL
        taken(route(d.request, roster, accounts, state, rules, now), ts)
    release_until(end)
    out.still_queued = sum(len(q) for q in state.queues.values())
    return out


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def side_summary(rules: Rules, decisions: Sequence[Decided], routing: RoutingOutcome,
                 roster: Mapping[str, Rep], refused: Counter[str]) -> dict[str, Any]:
    mql = [d for d in decisions if d.type == "lead.mql"]
    sql = [d for d in decisions if d.type == "lead.sql"]
    mql_keys = {(d.lead_id, d.cycle) for d in mql}
    converted = sum(1 for d in sql if (d.lead_id, d.cycle) in mql_keys)
    peak: dict[str, dict[str, int | None]] = {}
    full = []
    for rep, n in sorted(routing.peak_open.items()):
        capacity = roster[rep].max_open_leads if rep in roster else None
        peak[rep] = {"peak_open": n, "max_open_leads": capacity}
        if capacity is not None and n >= capacity:
            full.append(rep)
    return {
        "rules_version": rules.version,
        "mql": len(mql),
        "sql": len(sql),
        "mql_by_path": dict(Counter(d.path or "none" for d in mql)),
        "sql_by_path": dict(Counter(d.path or "none" for d in sql)),
        "sql_by_pool": dict(routing.sql_by_pool),
        "mql_to_sql_rate": _rate(converted, len(mql)),
        "sla_class_mix": dict(Counter(d.sla_class or "none" for d in sql)),
        "assigned_by_pool": dict(routing.assigned_by_pool),
        "assigned_by_rep": dict(sorted(routing.assigned_by_rep.items())),
        "peak_open_by_rep": peak,
        "reps_at_capacity": full,
        "queued": routing.queued,
        "queued_leads": routing.queued_leads,
        "still_queued": routing.still_queued,
        "queue_seconds_p50": _quantile(routing.queue_seconds, 0.5),
        "refused_inputs": dict(refused),
    }


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def evidence(leads: Sequence[str], sales: SalesHistory) -> dict[str, Any]:
    verdicts = Counter(sales.judgement(lead) for lead in leads)
    rejected = {k.removeprefix("rejected: "): v for k, v in verdicts.items()
                if k.startswith("rejected")}
    return {
        "leads": len(leads),
        "accepted": verdicts["accepted"],
        "converted": verdicts["converted"],
        "rejected": sum(rejected.values()),
        "rejected_by_reason": dict(sorted(rejected.items())),
        "disqualified": verdicts["disqualified"],
        "released": verdicts["released"],
        "no_verdict": verdicts["touched, no verdict"] + verdicts["no feedback"],
    }


@dataclass
class Simulation:
    baseline: Rules
    candidate: Rules
    range: TimeRange
    result: ReplayResult
    seconds: float
    workers: int
    source: str
    summary: dict[str, Any]


def simulate(history: History, baseline: Rules, candidate: Rules, rng: TimeRange,
             workers: int = 1, progress: bool = False) -> Simulation:
    inputs = [*history.topic(PROFILES), *history.topic(TOUCHPOINTS), *history.topic(ACTIVITY)]
    accounts = latest_by_key(history.topic(ACCOUNTS), NamedAccount, baseline)
    refused_activity = not_holder_activity(history.topic(ACTIVITY), history.topic(ASSIGNMENTS))
    started = time.perf_counter()
    result = replay(inputs, [baseline, candidate], accounts.keys(), count_from=rng.start,
                    workers=workers, progress=progress, skip=refused_activity)
    seconds = time.perf_counter() - started
    # the router ignored what non-holders said: neither a verdict nor the end of a hold
    sales = SalesHistory.from_records([r for r in history.topic(ACTIVITY) if (
        r.topic, r.partition, r.offset) not in refused_activity], baseline)
    rep_updates = _rep_updates(history.topic(REPS), baseline)
    roster = latest_by_key(history.topic(REPS), Rep, baseline)
    # without an end, every release in the history counts (an activity's own time may be a
    # moment after its record's)
    end = rng.end if rng.end is not None else float("inf")

    def counted(d: Decided) -> bool:
        return rng.start is None or d.occurred_at >= rng.start

    by_side: list[list[Decided]] = [[], []]
    for d in result.decisions:
        if counted(d):
            by_side[d.rules_index].append(d)
    # the median hold in the baseline, for leads that sales never saw
    holds = []
    for d in by_side[0]:
        if d.type == "lead.sql":
            close = sales.close_after(d.lead_id, d.occurred_at)
            if close is not None:
                holds.append(close - d.occurred_at)
    default_hold = statistics.median(holds) if holds else None
    arrival = _arrivals(history, {d.triggered_by for d in result.decisions
                                  if d.type == "lead.sql"})
    sides = []
    for i, rules in enumerate((baseline, candidate)):
        sqls = sorted(((max(d.occurred_at, arrival.get(d.triggered_by, 0.0)), d)
                       for d in by_side[i] if d.type == "lead.sql"),
                      key=lambda x: (x[0], x[1].lead_id))
        routing = simulate_routing(sqls, rep_updates, accounts, rules, sales, default_hold, end)
        sides.append(side_summary(rules, by_side[i], routing, roster, result.refused[i]))
    best_b, best_c = result.best
    leads = sorted(set(best_b) | set(best_c))
    changed = [lead for lead in leads if best_b.get(lead, 0) != best_c.get(lead, 0)]
    added = [lead for lead in changed if best_c.get(lead, 0) == 2]
    dropped = [lead for lead in changed if best_b.get(lead, 0) == 2]
    sample = [{
        "lead_id": lead,
        "baseline_stage": RANK_STAGE[best_b.get(lead, 0)].value,
        "candidate_stage": RANK_STAGE[best_c.get(lead, 0)].value,
        "why": result.why.get(lead, []),
        "sales_judgement": sales.judgement(lead),
    } for lead in changed[:SAMPLE]]
    notes = [
        "inputs are ordered by event time; refusals of future-dated events use the record's"
        " broker time as the router's clock",
        "named accounts are taken at their final state; the roster changes as it did",
        f"sales activity from a rep who did not hold the lead is left out, as the router"
        f" refuses it ({len(refused_activity)} records)" if history.topic(ASSIGNMENTS) else
        "the history has no leads.assignments: every rejection and release recycles, even"
        " one the router would refuse as not from the lead's holder",
    ]
    if rng.start is not None:
        days = max(baseline.windows.engagement_days, candidate.windows.engagement_days)
        notes.append(f"a warm-up of {days} days before the range is replayed so windows"
                     " start full; only decisions inside the range are counted")
    if default_hold is not None:
        notes.append("leads sales never held are held for the median hold,"
                     f" {default_hold:.0f} s")
    summary = {
        "range": {"from": _iso(rng.start), "to": _iso(rng.end)},
        "history": {"source": history.source, "events": result.events, "leads": result.leads},
        "replay": {"seconds": round(seconds, 3), "workers": workers,
                   "events_per_second": round(result.events / max(seconds, 1e-9))},
        "baseline": sides[0],
        "candidate": sides[1],
        "changed": len(changed),
        "changed_by_direction": {
            "sql_added": len(added), "sql_dropped": len(dropped),
            "other": len(changed) - len(added) - len(dropped)},
        "changed_leads": sample,
        "sales_evidence": {"sql_added": evidence(added, sales),
                           "sql_dropped": evidence(dropped, sales)},
        "notes": notes,
    }
    return Simulation(baseline, candidate, rng, result, seconds, workers, history.source,
                      summary)


def _arrivals(history: History, triggers: set[str]) -> dict[str, float]:
    """When each SQL's trigger reached the broker: the router routes an SQL when it reads the
    record, which for late or back-dated data is after the event time."""
    out: dict[str, float] = {}
    for r in history.topic(TOUCHPOINTS):
        try:
            ident = orjson.loads(r.value or b"null").get("event_id")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if ident in triggers:
            out.setdefault(ident, r.timestamp)
    for r in history.topic(PROFILES):
        try:
            raw = orjson.loads(r.value or b"null")
            ident = f"profile@{format_rfc3339(datetime.fromisoformat(raw['updated_at']))}"
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
            continue
        if ident in triggers:
            out.setdefault(ident, r.timestamp)
    return out


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


def render_text(s: dict[str, Any]) -> str:
    b, c = s["baseline"], s["candidate"]
    rows = [("MQL", b["mql"], c["mql"]), ("SQL", b["sql"], c["sql"])]
    for path in sorted(set(b["sql_by_path"]) | set(c["sql_by_path"])):
        rows.append((f"  SQL {path}", b["sql_by_path"].get(path, 0),
                     c["sql_by_path"].get(path, 0)))
    rows.append(("MQL->SQL", _pct(b["mql_to_sql_rate"]), _pct(c["mql_to_sql_rate"])))
    for pool in sorted(set(b["assigned_by_pool"]) | set(c["assigned_by_pool"])):
        rows.append((f"  assigned {pool}", b["assigned_by_pool"].get(pool, 0),
                     c["assigned_by_pool"].get(pool, 0)))
    rows.append(("queued", b["queued"], c["queued"]))
    rows.append(("reps at capacity", len(b["reps_at_capacity"]), len(c["reps_at_capacity"])))
    lines = [f"leadrouter simulate: {s['history']['events']:,} events, {s['history']['leads']:,}"
             f" leads ({s['range']['from'] or 'beginning'} to {s['range']['to'] or 'now'})",
             f"  replayed in {s['replay']['seconds']} s on {s['replay']['workers']} process(es):"
             f" {s['replay']['events_per_second']:,} events/s",
             f"  {'':22} {'baseline':>12} {'candidate':>12}",
             f"  {'rules':22} {b['rules_version']:>12} {c['rules_version']:>12}"]
    lines += [f"  {name:22} {bv!s:>12} {cv!s:>12}" for name, bv, cv in rows]
    d = s["changed_by_direction"]
    lines.append(f"  leads whose outcome changes: {s['changed']} (SQL added {d['sql_added']},"
                 f" dropped {d['sql_dropped']}, other {d['other']})")
    for side in ("sql_added", "sql_dropped"):
        e = s["sales_evidence"][side]
        lines.append(f"  sales on the SQLs {side.removeprefix('sql_')}: {e['leads']} leads,"
                     f" accepted {e['accepted']}, converted {e['converted']}, rejected"
                     f" {e['rejected']}{_reasons(e['rejected_by_reason'])}, no verdict"
                     f" {e['no_verdict']}")
    for row in s["changed_leads"][:10]:
        lines.append(f"    {row['lead_id']}: {row['baseline_stage']} -> {row['candidate_stage']}"
                     f" ({row['sales_judgement']}): {'; '.join(row['why'])}")
    return "\n".join(lines)


def _reasons(by_reason: Mapping[str, int]) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in by_reason.items())})" if by_reason else ""


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def run_simulate(*, rules: str, baseline: str | None, since: str | None, start: str | None,
                 end: str | None, history_file: str | None, broker: str, prefix: str,
                 out: str | None, as_json: bool, workers: int | None, quiet: bool) -> int:
    # the whole command with the collector tuned as for the replay (router/gc_tuning.py):
    # reading a 1M-record history made hundreds of young collections and full walks of the
    # growing heap (5.6 s of reading it, 3.4 s with this), and the routing after it more
    with bulk_work():
        return _run_simulate(rules=rules, baseline=baseline, since=since, start=start,
                             end=end, history_file=history_file, broker=broker, prefix=prefix,
                             out=out, as_json=as_json, workers=workers, quiet=quiet)


def _run_simulate(*, rules: str, baseline: str | None, since: str | None, start: str | None,
                  end: str | None, history_file: str | None, broker: str, prefix: str,
                  out: str | None, as_json: bool, workers: int | None, quiet: bool) -> int:
    try:
        candidate = load_rules(rules)
        current = load_rules(baseline or os.environ.get("LEADROUTER_RULES") or None)
        rng = time_range(since, start, end)
        warmup = 86400.0 * max(current.windows.engagement_days,
                               candidate.windows.engagement_days)
        history = load_history(history_file, broker, prefix, (*INPUT_TOPICS, ASSIGNMENTS), rng,
                               warmup)
    except (RulesError, HistoryError) as exc:
        print(f"leadrouter simulate: {exc}", file=sys.stderr)
        return 2
    sim = simulate(history, current, candidate, rng, workers or default_workers(),
                   progress=not quiet)
    if as_json:
        print(orjson.dumps(sim.summary).decode())
    else:
        print(render_text(sim.summary))
    if out is not None:
        from router.tools.pages import simulate_page

        with open(out, "w", encoding="utf-8") as f:
            f.write(simulate_page(sim.summary))
        print(f"wrote {out}", file=sys.stderr)
    return 0
