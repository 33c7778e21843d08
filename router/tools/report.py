"""`leadrouter report`: the weekly funnel review, from the output and activity topics.

What it counts (each figure is reproducible by hand from the topics; repeated event ids are
dropped first, as any consumer of an at-least-once stream does):
- SQLs and MQLs: `lead.sql` / `lead.mql` whose records fall in the range; MQL->SQL: the share of
  those MQLs whose cycle reached SQL (by the end of the history read);
- assigned: lead cycles with a `lead.assigned` in the range; sales activity is attributed to the
  lead's latest assignment at or before it; acceptance = accepted / assigned, rejection =
  rejected / assigned;
- speed to lead: first touch time minus the start of the SLA clock (the lead's first
  `lead.assigned` or `lead.queued` in that cycle): how long the lead waited. By rep it is
  counted from that rep's own assignment instead, so a backup rep who got the lead after
  someone else's breach is not charged with the first rep's wait; percentiles are nearest-rank;
- SLA breach rate: `sla.breached` / (`sla.met` + `sla.breached`), per assignment;
- time in queue: `lead.queued` to the `lead.assigned` that took the lead off the queue.
The diagnostics are the published marketing-sales SLA ones (SPEC §9).
"""

from __future__ import annotations

import math
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from router.tools.history import (
    ACTIVITY,
    ASSIGNMENTS,
    SLA,
    TOUCHPOINTS,
    TRANSITIONS,
    History,
    HistoryError,
    HistoryRecord,
    TimeRange,
    load_history,
    time_range,
)

REJECTION_RATE_LINE = 0.25
NO_FIT_LINE = 0.20
BAD_TIMING_LINE = 0.40
SLA_ESCALATION_LINE = 0.10
TOUCH_LOOKBACK_SECONDS = 30 * 86400.0  # first touches are looked for this far before the range


def nearest_rank(values: Sequence[float], q: float) -> float | None:
    """The q-quantile by nearest rank: the smallest value with at least q of them at or below."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def events(records: Iterable[HistoryRecord]) -> list[dict[str, Any]]:
    """Decoded values in record order, repeats of an event id dropped; `_ts` = record time."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for r in records:
        try:
            value = orjson.loads(r.value or b"null")
        except orjson.JSONDecodeError:
            continue
        if not isinstance(value, dict) or not isinstance(value.get("lead_id"), str):
            continue
        ident = value.get("event_id")
        if isinstance(ident, str):
            if ident in seen:
                continue
            seen.add(ident)
        value["_ts"] = r.timestamp
        out.append(value)
    out.sort(key=lambda e: e["_ts"])
    return out


def _percentiles(values: Sequence[float]) -> dict[str, Any]:
    return {"count": len(values), "p50": nearest_rank(values, 0.5),
            "p90": nearest_rank(values, 0.9)}


def _grouped(rows: Iterable[tuple[str, float]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for name, value in rows:
        groups[name].append(value)
    return {name: _percentiles(values) for name, values in sorted(groups.items())}


@dataclass
class _Held:
    lead_id: str
    cycle: int
    at: float
    rep_id: str | None
    pool: str
    sla_class: str
    started: float  # the SLA clock: first assignment-topic event of the cycle


def build_report(history: History, rng: TimeRange) -> dict[str, Any]:
    def inside(e: dict[str, Any]) -> bool:
        return rng.contains(e["_ts"])

    transitions = events(history.topic(TRANSITIONS))
    assignments = events(history.topic(ASSIGNMENTS))
    sla = events(history.topic(SLA))
    activity = events(history.topic(ACTIVITY))
    touches = events(history.topic(TOUCHPOINTS))

    # touchpoints: the first touch of each lead, and each touch by id (for the SQL trigger)
    first_touch: dict[str, dict[str, Any]] = {}
    by_id: dict[str, dict[str, Any]] = {}
    for t in touches:
        if not isinstance(t.get("occurred_at"), str):
            continue
        by_id[str(t.get("event_id"))] = t
        try:
            t["_at"] = _ts(t["occurred_at"])
        except ValueError:
            continue
        held = first_touch.get(t["lead_id"])
        if held is None or t["_at"] < held["_at"]:
            first_touch[t["lead_id"]] = t

    def channel(t: dict[str, Any] | None) -> str:
        return str(t.get("channel") or "unknown") if t is not None else "unknown"

    def campaign(t: dict[str, Any] | None) -> str:
        props = t.get("properties") if t is not None else None
        value = props.get("campaign") if isinstance(props, dict) else None
        return str(value) if value else "none"

    mqls = [t for t in transitions if t.get("type") == "lead.mql" and inside(t)]
    sqls = [t for t in transitions if t.get("type") == "lead.sql" and inside(t)]
    sql_keys = {(t["lead_id"], t.get("cycle")) for t in transitions if t.get("type") == "lead.sql"}
    converted = sum(1 for t in mqls if (t["lead_id"], t.get("cycle")) in sql_keys)

    # assignments: the clock start and pool of each cycle, the holders over time
    first_event: dict[tuple[str, int], dict[str, Any]] = {}
    holdings: dict[str, list[_Held]] = defaultdict(list)
    queued_at: dict[tuple[str, int], float] = {}
    queue_seconds: list[float] = []
    for a in assignments:
        key = (a["lead_id"], int(a.get("cycle", 1)))
        first = first_event.setdefault(key, a)
        klass = str((a.get("sla") or {}).get("class", "unknown"))
        if a.get("type") == "lead.queued":
            queued_at.setdefault(key, a["_ts"])
            continue
        if key in queued_at and a.get("type") == "lead.assigned":
            queue_seconds.append(a["_ts"] - queued_at[key])
        holdings[a["lead_id"]].append(_Held(a["lead_id"], key[1], a["_ts"], a.get("rep_id"),
                                            str(a.get("pool")), klass, first["_ts"]))
    taken = {(lead, h.cycle) for lead, hs in holdings.items() for h in hs}
    still_queued = sum(1 for key in queued_at if key not in taken)

    def holder_at(lead: str, ts: float) -> _Held | None:
        found = None
        for h in holdings.get(lead, ()):
            if h.at <= ts:
                found = h
        return found

    assigned = {(a["lead_id"], int(a.get("cycle", 1))): a for a in assignments
                if a.get("type") == "lead.assigned" and inside(a)}
    verdicts: dict[tuple[str, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    responses: list[tuple[_Held, float]] = []
    rep_seconds: dict[int, float] = {}  # id(response holder) -> from that rep's assignment
    for act in activity:
        when = act.get("occurred_at")
        ts = _ts(when) if isinstance(when, str) else act["_ts"]
        h = holder_at(act["lead_id"], max(ts, act["_ts"]))
        if h is None or act.get("rep_id") != h.rep_id:
            continue  # the router refused it (not the holder): it never counted
        kind = str(act.get("type"))
        mine = verdicts[(h.lead_id, h.cycle)]
        if kind in mine:
            continue
        mine[kind] = act
        if kind == "first_touch":
            responses.append((h, max(0.0, ts - h.started)))
            rep_seconds[id(h)] = max(0.0, ts - h.at)
    accepted = [k for k in assigned if "accepted" in verdicts.get(k, {})]
    rejected = [verdicts[k]["rejected"] for k in assigned if "rejected" in verdicts.get(k, {})]
    reasons = Counter(str(r.get("reason") or "other") for r in rejected)
    rejection_rate = _rate(len(rejected), len(assigned))

    # SLA outcomes per assignment
    outcomes = [s for s in sla if s.get("type") in ("sla.met", "sla.breached") and inside(s)]

    def breach_rates(label: Callable[[dict[str, Any]], str]) -> dict[str, dict[str, Any]]:
        groups: dict[str, Counter[str]] = defaultdict(Counter)
        for s in outcomes:
            groups[label(s)][s["type"]] += 1
        return {name: {"met": c["sla.met"], "breached": c["sla.breached"],
                       "rate": _rate(c["sla.breached"], c["sla.met"] + c["sla.breached"])}
                for name, c in sorted(groups.items())}

    breached = sum(1 for s in outcomes if s["type"] == "sla.breached")
    by_class = breach_rates(lambda s: str(s.get("sla_class")))
    by_pool = breach_rates(lambda s: str(s.get("pool")))
    by_rep = breach_rates(lambda s: str(s.get("rep_id") or "(queue)"))

    flags = diagnostics(rejection_rate, reasons, {"class": by_class, "pool": by_pool,
                                                  "rep": by_rep})
    in_range_responses = [(h, sec) for h, sec in responses if rng.contains(h.started)]
    seconds = [sec for _, sec in in_range_responses]

    def day(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")

    trend: dict[str, Counter[str]] = defaultdict(Counter)
    for t in mqls:
        trend[day(t["_ts"])]["mql"] += 1
    for t in sqls:
        trend[day(t["_ts"])]["sql"] += 1
    for a in assigned.values():
        trend[day(a["_ts"])]["assigned"] += 1
    for key in accepted:
        trend[day(verdicts[key]["accepted"]["_ts"])]["accepted"] += 1
    for r in rejected:
        trend[day(r["_ts"])]["rejected"] += 1
    for s in outcomes:
        if s["type"] == "sla.breached":
            trend[day(s["_ts"])]["sla_breached"] += 1
    columns = ("mql", "sql", "assigned", "accepted", "rejected", "sla_breached")

    return {
        "range": {"from": _iso(rng.start), "to": _iso(rng.end)},
        "source": history.source,
        "mql": len(mqls),
        "sql": len(sqls),
        "sql_by_path": dict(Counter(str(t.get("path")) for t in sqls)),
        "sql_by_pool": dict(Counter(
            str(first_event[(t["lead_id"], int(t.get("cycle", 1)))].get("pool"))
            if (t["lead_id"], int(t.get("cycle", 1))) in first_event else "(not routed)"
            for t in sqls)),
        "sql_by_channel": {
            "first_touch": dict(Counter(channel(first_touch.get(t["lead_id"])) for t in sqls)),
            "trigger": dict(Counter(_trigger(t, by_id, channel) for t in sqls)),
        },
        "sql_by_campaign": {
            "first_touch": dict(Counter(campaign(first_touch.get(t["lead_id"])) for t in sqls)),
            "trigger": dict(Counter(_trigger(t, by_id, campaign) for t in sqls)),
        },
        "mql_to_sql_rate": _rate(converted, len(mqls)),
        "assigned": len(assigned),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "acceptance_rate": _rate(len(accepted), len(assigned)),
        "rejection_rate": rejection_rate,
        "rejections_by_reason": dict(reasons.most_common()),
        "first_touch_p50_seconds": nearest_rank(seconds, 0.5),
        "first_touch_p90_seconds": nearest_rank(seconds, 0.9),
        "first_touch_seconds": {
            "by_class": _grouped((h.sla_class, sec) for h, sec in in_range_responses),
            "by_pool": _grouped((h.pool, sec) for h, sec in in_range_responses),
            "by_rep": _grouped((str(h.rep_id), rep_seconds[id(h)])
                               for h, _ in in_range_responses),
        },
        "first_touch_samples_by_pool": _samples(in_range_responses),
        "sla_breach_rate": _rate(breached, len(outcomes)),
        "sla_breach_rate_by": {"class": by_class, "pool": by_pool, "rep": by_rep},
        "sla_escalation_line": SLA_ESCALATION_LINE,
        "queue": {"queued": len(queue_seconds) + still_queued, "still_queued": still_queued,
                  "seconds_p50": nearest_rank(queue_seconds, 0.5),
                  "seconds_p90": nearest_rank(queue_seconds, 0.9),
                  "seconds_max": round(max(queue_seconds), 3) if queue_seconds else None},
        "trend": [{"day": d, **{c: trend[d][c] for c in columns}} for d in sorted(trend)],
        "flags": flags,
    }


def _samples(rows: Sequence[tuple[_Held, float]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for h, sec in rows:
        out[h.pool].append(round(sec, 3))
    return dict(sorted(out.items()))


def _trigger(t: dict[str, Any], by_id: dict[str, dict[str, Any]],
             pick: Callable[[dict[str, Any] | None], str]) -> str:
    trigger = str(t.get("triggered_by", ""))
    if trigger.startswith("profile@"):
        return "(profile update)"
    return pick(by_id.get(trigger))


def diagnostics(rejection_rate: float | None, reasons: Counter[str],
                breach: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The published diagnostics that the figures cross, each with what to look at."""
    flags: list[dict[str, Any]] = []
    total = sum(reasons.values())
    if rejection_rate is not None and rejection_rate > REJECTION_RATE_LINE:
        flags.append({"flag": "rejection_rate", "value": rejection_rate,
                      "line": REJECTION_RATE_LINE,
                      "message": f"sales reject {rejection_rate:.0%} of assigned SQLs (above"
                                 f" {REJECTION_RATE_LINE:.0%}): review the SQL definition"
                                 " with sales"})
    if total:
        no_fit = reasons["no_fit"] / total
        if no_fit > NO_FIT_LINE:
            flags.append({"flag": "no_fit", "value": round(no_fit, 4), "line": NO_FIT_LINE,
                          "message": f"no_fit is {no_fit:.0%} of rejections (above"
                                     f" {NO_FIT_LINE:.0%}): targeting; check the fit rules"
                                     " and the campaigns feeding them"})
        bad_timing = reasons["bad_timing"] / total
        if bad_timing > BAD_TIMING_LINE:
            flags.append({"flag": "bad_timing", "value": round(bad_timing, 4),
                          "line": BAD_TIMING_LINE,
                          "message": f"bad_timing is {bad_timing:.0%} of rejections (above"
                                     f" {BAD_TIMING_LINE:.0%}): leads are handed off too early;"
                                     " raise the engagement or intent thresholds"})
        top = max(reasons.values())
        if reasons["could_not_reach"] == top:
            flags.append({"flag": "could_not_reach", "value": reasons["could_not_reach"],
                          "line": None,
                          "message": "could_not_reach is the top rejection reason: check routing"
                                     " (speed to lead, language, time zones) and contact data"})
    for group, rows in breach.items():
        for name, row in rows.items():
            if row["rate"] is not None and row["rate"] > SLA_ESCALATION_LINE:
                flags.append({"flag": f"sla_breach_{group}", "name": name, "value": row["rate"],
                              "line": SLA_ESCALATION_LINE,
                              "message": f"SLA breach rate {row['rate']:.0%} for {group} {name}"
                                         f" (above the {SLA_ESCALATION_LINE:.0%} escalation"
                                         " line)"})
    return flags


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def render_text(r: dict[str, Any]) -> str:
    span = f"{r['range']['from'] or 'beginning'} to {r['range']['to'] or 'now'}"
    lines = [f"leadrouter report ({span})",
             f"  MQL {r['mql']}, SQL {r['sql']} (MQL->SQL {_pct(r['mql_to_sql_rate'])})",
             f"  SQL by path: {r['sql_by_path']}",
             f"  SQL by pool: {r['sql_by_pool']}",
             f"  SQL by first-touch channel: {r['sql_by_channel']['first_touch']}",
             f"  SQL by trigger campaign: {r['sql_by_campaign']['trigger']}",
             f"  assigned {r['assigned']}: accepted {r['accepted']}"
             f" ({_pct(r['acceptance_rate'])}), rejected {r['rejected']}"
             f" ({_pct(r['rejection_rate'])})",
             f"  rejection reasons: {r['rejections_by_reason'] or 'none'}",
             f"  speed to lead: p50 {_secs(r['first_touch_p50_seconds'])},"
             f" p90 {_secs(r['first_touch_p90_seconds'])}",
             f"  SLA breach rate: {_pct(r['sla_breach_rate'])}"
             f" (escalation line {r['sla_escalation_line']:.0%})",
             f"  queue: {r['queue']['queued']} queued, {r['queue']['still_queued']} still"
             f" queued, p50 {_secs(r['queue']['seconds_p50'])}"]
    if r["flags"]:
        lines.append("  FLAGS:")
        lines += [f"    - {f['message']}" for f in r["flags"]]
    else:
        lines.append("  flags: none")
    return "\n".join(lines)


REPORT_TOPICS = (TRANSITIONS, ASSIGNMENTS, SLA, ACTIVITY, TOUCHPOINTS)


def run_report(*, since: str | None, start: str | None, end: str | None,
               history_file: str | None, broker: str, prefix: str, out: str | None,
               as_json: bool) -> int:
    try:
        rng = time_range(since, start, end)
        history = load_history(history_file, broker, prefix, REPORT_TOPICS, rng,
                               TOUCH_LOOKBACK_SECONDS)
    except HistoryError as exc:
        print(f"leadrouter report: {exc}", file=sys.stderr)
        return 2
    report = build_report(history, rng)
    if as_json:
        print(orjson.dumps(report).decode())
    else:
        print(render_text(report))
    if out is not None:
        from router.tools.pages import report_page

        with open(out, "w", encoding="utf-8") as f:
            f.write(report_page(report))
        print(f"wrote {out}", file=sys.stderr)
    return 0
