"""The replay core: history in, rules in, decisions out, through the pure engine.

Shared by `leadrouter verify` (one rule set, checked against what the workers emitted) and
`leadrouter simulate` (two rule sets side by side). Inputs are decoded with the worker's own
decoders (so the same records are refused for the same reasons), ordered by event time (profiles
before touchpoints at the same instant; qualification is order-independent by construction, so
this one canonical order gives the stage the rules call for), and applied lead by lead with the
functions of router.domain.qualification. Sales rejections and releases in the history recycle a
lead that is SQL at that moment, as the routing stage does live.

Nothing here talks to Kafka. Speed: decoding and the rules cost tens of microseconds per event
in CPython, so a long history is split by lead (crc32 of the key, like a partitioner) across
worker processes that each replay their share; leads never interact in qualification.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized
from operator import itemgetter
from typing import Any

import orjson

from router import __version__
from router.adapters.wire import Refused, decode, decode_profile, decode_touchpoint
from router.domain.criteria import Assessment, assess, missing_for_next_stage
from router.domain.events import (
    LeadProfile,
    SalesActivity,
    SalesActivityType,
    Stage,
    Touchpoint,
    Transition,
)
from router.domain.lead_state import LeadState
from router.domain.qualification import Context, apply_profile, apply_recycle, apply_touchpoint
from router.domain.routing_state import RouteRequest
from router.domain.rules import SENIORITY_RANK, Rules
from router.gc_tuning import bulk_work
from router.service.qualifier import route_request
from router.tools.history import ACTIVITY, PROFILES, TOUCHPOINTS, HistoryRecord

STAGE_RANK = {Stage.NEW: 0, Stage.MQL: 1, Stage.SQL: 2}
RANK_STAGE = {v: k for k, v in STAGE_RANK.items()}
# a rejection or a release sends an SQL back to nurture (router.service.routing_stage)
RECYCLING = frozenset({SalesActivityType.REJECTED, SalesActivityType.RELEASED})
REPLAY_TIME = datetime(2000, 1, 1, tzinfo=UTC)  # emitted_at of replayed decisions (unused)


@dataclass(frozen=True, slots=True)
class Recycle:
    """Sales rejected or released the lead (from the history's sales.activity)."""

    lead_id: str
    occurred_at: datetime
    trigger: str
    reason: str


InputEvent = Touchpoint | LeadProfile | Recycle
# (event time, kind: 0 profile, 1 touchpoint, 2 recycle, bitmask of the rule sets that accept it)
Ordered = tuple[float, int, int, InputEvent]


@dataclass(slots=True)
class Decided:
    """One replayed transition, small enough to send between processes."""

    rules_index: int
    lead_id: str
    type: str
    cycle: int
    path: str | None
    occurred_at: float
    triggered_by: str
    sla_class: str | None = None
    request: RouteRequest | None = None  # lead.sql: what routing needs


@dataclass
class ReplayResult:
    decisions: list[Decided] = field(default_factory=list)
    # per rule set: lead -> highest stage rank reached by a transition in the counted range
    best: list[dict[str, int]] = field(default_factory=list)
    # lead -> why the rule sets disagree, taken when they last moved apart (two rule sets)
    why: dict[str, list[str]] = field(default_factory=dict)
    refused: list[Counter[str]] = field(default_factory=list)  # per rule set, by reason
    events: int = 0
    leads: int = 0
    states: list[dict[str, LeadState]] = field(default_factory=list)  # only when kept

    def merge(self, other: ReplayResult) -> None:
        self.decisions += other.decisions
        for mine, theirs in zip(self.best, other.best, strict=True):
            mine.update(theirs)
        self.why.update(other.why)
        for mine_c, theirs_c in zip(self.refused, other.refused, strict=True):
            mine_c.update(theirs_c)
        self.events += other.events
        self.leads += other.leads


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def _input_groups(rule_sets: Sequence[Rules]) -> list[tuple[Rules, int]]:
    """Rule sets with the same input limits decode alike: decode once per distinct limit."""
    groups: list[tuple[Rules, int]] = []
    for i, rules in enumerate(rule_sets):
        for j, (first, mask) in enumerate(groups):
            if first.input == rules.input:
                groups[j] = (first, mask | (1 << i))
                break
        else:
            groups.append((rules, 1 << i))
    return groups


def decode_records(
    records: Iterable[HistoryRecord],
    rule_sets: Sequence[Rules],
    *,
    future_check: bool = True,
    skip: frozenset[tuple[str, int, int]] | set[tuple[str, int, int]] = frozenset(),
    on_refused: Callable[[HistoryRecord, Refused], None] | None = None,
    refused: Sequence[Counter[str]] | None = None,
) -> list[Ordered]:
    """Decode touchpoints, profiles and recycling sales activity into time-ordered events.

    `future_check` refuses events dated ahead of the record's broker timestamp by more than
    the rules allow (the worker compares with its clock, which is no earlier). `skip` names
    records to leave out (topic, partition, offset): the verifier passes the dead letters.
    """
    groups = _input_groups(rule_sets)
    out: list[Ordered] = []
    for r in records:
        if (r.topic, r.partition, r.offset) in skip:
            continue
        for rules, mask in groups:
            event: InputEvent
            kind: int
            try:
                if r.topic == TOUCHPOINTS:
                    kind = 1
                    if future_check:
                        now = datetime.fromtimestamp(r.timestamp, UTC)
                        event = decode_touchpoint(r.key, r.value, rules, now)
                    else:
                        event = decode(Touchpoint, r.key, r.value, rules)
                    when = event.occurred_at.timestamp()
                elif r.topic == PROFILES:
                    kind = 0
                    if future_check:
                        now = datetime.fromtimestamp(r.timestamp, UTC)
                        event = decode_profile(r.key, r.value, rules, now)
                    else:
                        event = decode(LeadProfile, r.key, r.value, rules)
                    when = event.updated_at.timestamp()
                elif r.topic == ACTIVITY:
                    kind = 2
                    activity = decode(SalesActivity, r.key, r.value, rules)
                    if activity.type not in RECYCLING:
                        break  # only recycling matters to qualification; same for every group
                    because = activity.type.value + (
                        f": {activity.reason.value}" if activity.reason is not None else "")
                    event = Recycle(activity.lead_id, activity.occurred_at, activity.event_id,
                                    because)
                    when = activity.occurred_at.timestamp()
                else:
                    break
            except Refused as exc:
                if refused is not None:
                    for i in range(len(rule_sets)):
                        if mask >> i & 1:
                            refused[i][exc.reason] += 1
                if on_refused is not None:
                    on_refused(r, exc)
                continue
            out.append((when, kind, mask, event))
    out.sort(key=itemgetter(0, 1))  # (time, kind); stable: record order breaks the other ties
    return out


# --------------------------------------------------------------------------------------------
# Replaying
# --------------------------------------------------------------------------------------------

_CRITERIA = ("fit", "abm", "mql_authority", "sql_authority", "mql_engagement", "sql_engagement",
             "mql_intent", "sql_intent", "talk_to_sales")


def _authority_rule(name: str, rules: Rules) -> str:
    """What the rules ask of a lead's seniority and buying role, in their own words."""
    if name == "mql_authority":
        mql = rules.authority.mql
        return (f"{mql.min_seniority.value} or above, or "
                + " or ".join(sorted(r.value for r in mql.buying_roles)))
    sql = rules.authority.sql
    ranked = sorted(sql.seniorities, key=SENIORITY_RANK.__getitem__)
    wants = []
    if ranked:
        wants.append("seniority " + ", ".join(s.value for s in ranked))
    if sql.buying_roles:
        wants.append("role " + ", ".join(sorted(r.value for r in sql.buying_roles)))
    return " or ".join(wants) or "nothing"


def _criterion_detail(name: str, a: Assessment, rules: Rules | None = None) -> str:
    d = a.detail
    if name == "fit":
        return "; ".join(d["fit"]["missing"]) or (
            f"{d['fit']['employees']} employees, {d['fit']['industry']}")
    if name == "abm":
        return f"named account {d['fit']['named_account']}" if a.abm else "no named account"
    if name.endswith("authority"):
        # the lead's seniority and role are the same under both rule sets: what differs is
        # what the rules ask for, so say it (without it the reader sees "x; baseline: x")
        who = f"{d['authority']['seniority']}/{d['authority']['buying_role']}"
        return who if rules is None else f"{who}, needs {_authority_rule(name, rules)}"
    if name.endswith("engagement"):
        e = d["engagement"]
        need = e["mql_required"] if name.startswith("mql") else e["sql_required"]
        return f"{e['touchpoints_in_window']}/{need} touchpoints in {e['window_days']} days"
    i = d["intent"]
    if name == "talk_to_sales":
        return f"talk-to-sales {i['talk_to_sales']}" if a.talk_to_sales else "no talk-to-sales"
    return (f"{i['pricing_views_within_pair_window']}/{i['pricing_views_required']} pricing"
            f" views within {i['pair_window_days']} days")


def explain(baseline: Assessment, candidate: Assessment,
            rules: tuple[Rules, Rules] | None = None) -> list[str]:
    """Which criteria the candidate now passes or fails, with the numbers behind them (and,
    given the two rule sets, what each asks for where the lead's own data is the same)."""
    b_rules, c_rules = rules if rules is not None else (None, None)
    out = []
    for name in _CRITERIA:
        before, after = getattr(baseline, name), getattr(candidate, name)
        if before != after:
            verb = "now passes" if after else "now fails"
            out.append(f"{name} {verb} ({_criterion_detail(name, candidate, c_rules)};"
                       f" baseline: {_criterion_detail(name, baseline, b_rules)})")
    return out


class Replayer:
    """Applies events to one lead state per rule set, in lock-step, recording decisions."""

    def __init__(self, rule_sets: Sequence[Rules], is_named_account: Callable[[str], bool],
                 count_from: float | None = None) -> None:
        self.rule_sets = list(rule_sets)
        self.contexts = [Context(rules=r, router_version=__version__, emitted_at=REPLAY_TIME,
                                 is_named_account=is_named_account) for r in rule_sets]
        self.states: list[dict[str, LeadState]] = [{} for _ in rule_sets]
        self.count_from = count_from
        self.result = ReplayResult(best=[{} for _ in rule_sets],
                                   refused=[Counter() for _ in rule_sets])

    def _record(self, i: int, state: LeadState, transitions: list[Transition]) -> None:
        best = self.result.best[i]
        for t in transitions:
            ts = t.occurred_at.timestamp()
            request = None
            if t.type == "lead.sql":
                request = route_request(state, t.occurred_at)
            sla = t.handover.sla_class.value if t.handover is not None else None
            self.result.decisions.append(Decided(
                i, t.lead_id, t.type, t.cycle, t.path.value if t.path else None, ts,
                t.triggered_by, sla, request))
            if t.type != "lead.recycled" and (self.count_from is None or ts >= self.count_from):
                rank = STAGE_RANK[t.to_stage]
                if rank > best.get(t.lead_id, 0):
                    best[t.lead_id] = rank

    def apply(self, event: InputEvent, mask: int = -1) -> None:
        lead = event.lead_id
        best = self.result.best
        # each rule set's best stage before this event, taken only when one of them moves
        # (before its first _record): most events move nothing, and this ran on every one
        before: list[int] | None = None
        tp = event if isinstance(event, Touchpoint) else None
        profile = event if isinstance(event, LeadProfile) else None
        for i, ctx in enumerate(self.contexts):
            if not mask >> i & 1:
                continue
            states = self.states[i]
            state = states.get(lead)
            if state is None:
                state = states[lead] = LeadState(lead)
            if tp is not None:
                transitions = apply_touchpoint(state, tp, ctx)
            elif profile is not None:
                transitions = apply_profile(state, profile, ctx)
            elif state.stage is Stage.SQL and isinstance(event, Recycle):
                # only a lead sales held can be recycled
                transitions = apply_recycle(state, state.cycle, event.reason, event.trigger,
                                            event.occurred_at, ctx)
            else:
                transitions = []
            if transitions:
                if before is None:
                    before = [b.get(lead, 0) for b in best]
                self._record(i, state, transitions)
        if before is not None and len(self.rule_sets) == 2:
            after = [best[i].get(lead, 0) for i in (0, 1)]
            if after[0] != after[1] and after != before:
                self.result.why[lead] = self._why(lead)

    def _why(self, lead: str) -> list[str]:
        a, b = (self.states[i].get(lead) for i in (0, 1))
        if a is None or b is None:
            return ["the lead's inputs were refused under one of the rule sets"]
        ab = assess(a, self.contexts[0].rules, self.contexts[0].is_named_account)
        cb = assess(b, self.contexts[1].rules, self.contexts[1].is_named_account)
        why = explain(ab, cb, (self.contexts[0].rules, self.contexts[1].rules))
        if not why:  # same criteria, different stage: the path or a window made the difference
            lower, assessment = (b, cb) if self.result.best[1].get(lead, 0) < \
                self.result.best[0].get(lead, 0) else (a, ab)
            why = missing_for_next_stage(lower, assessment) or ["same criteria; reached at a"
                                                                " different moment"]
        return why

    def finish(self, keep_states: bool = False) -> ReplayResult:
        self.result.leads = len(set().union(*(s.keys() for s in self.states)))
        if keep_states:
            self.result.states = self.states
        return self.result


def replay_events(events: Sequence[Ordered], rule_sets: Sequence[Rules],
                  is_named_account: Callable[[str], bool], count_from: float | None = None,
                  keep_states: bool = False,
                  tick: Callable[[int], None] | None = None) -> ReplayResult:
    replayer = Replayer(rule_sets, is_named_account, count_from)
    for n, (_, _, mask, event) in enumerate(events, 1):
        replayer.apply(event, mask)
        if tick is not None and n % 2000 == 0:
            tick(2000)
    if tick is not None:
        tick(len(events) % 2000)
    result = replayer.finish(keep_states)
    result.events = len(events)
    return result


# --------------------------------------------------------------------------------------------
# In parallel, by lead
# --------------------------------------------------------------------------------------------


def share_of(key: bytes | None, shares: int) -> int:
    return zlib.crc32(key or b"") % shares


@dataclass
class _Job:
    records: Sequence[HistoryRecord]
    rule_sets: Sequence[Rules]
    accounts: frozenset[str]
    count_from: float | None
    future_check: bool
    shares: int
    skip: frozenset[tuple[str, int, int]] = frozenset()


_JOB: _Job | None = None  # set before forking: children read it without pickling the history
_COUNTER: Synchronized[int] | None = None


def _tick(n: int) -> None:
    if _COUNTER is not None and n:
        with _COUNTER.get_lock():
            _COUNTER.value += n


def _run_share(index: int) -> ReplayResult:
    job = _JOB
    assert job is not None
    shares, crc32 = job.shares, zlib.crc32  # share_of inlined: it runs on every record
    mine = (r for r in job.records if crc32(r.key or b"") % shares == index) \
        if shares > 1 else iter(job.records)
    refused = [Counter[str]() for _ in job.rule_sets]
    events = decode_records(mine, job.rule_sets, future_check=job.future_check,
                            skip=job.skip, refused=refused)
    accounts = job.accounts
    result = replay_events(events, job.rule_sets, accounts.__contains__, job.count_from,
                           tick=_tick)
    result.refused = refused
    return result


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def replay(records: Sequence[HistoryRecord], rule_sets: Sequence[Rules],
           accounts: Iterable[str], *, count_from: float | None = None,
           future_check: bool = True, workers: int = 1, progress: bool = False,
           parallel_from: int = 20_000,
           skip: frozenset[tuple[str, int, int]] = frozenset()) -> ReplayResult:
    """Replay `records` (touchpoints, profiles, activity) under each rule set.

    `skip` names records (topic, partition, offset) the router refused after decoding them,
    which a replay cannot see by itself (sales activity from a rep who did not hold the lead).

    With `workers` > 1 the leads are split across that many forked processes. `progress`
    shows a bar on stderr (tqdm) counting the events applied. Fewer than `parallel_from`
    records are replayed in this process: forking costs more than they do.
    """
    with bulk_work():
        return _replay(records, rule_sets, accounts, count_from, future_check, workers,
                       progress, parallel_from, skip)


def _replay(records: Sequence[HistoryRecord], rule_sets: Sequence[Rules],
            accounts: Iterable[str], count_from: float | None, future_check: bool,
            workers: int, progress: bool, parallel_from: int,
            skip: frozenset[tuple[str, int, int]]) -> ReplayResult:
    global _JOB, _COUNTER
    job = _Job(records, rule_sets, frozenset(a.lower() for a in accounts), count_from,
               future_check, max(1, workers), skip)
    total = sum(1 for r in records if r.topic in (TOUCHPOINTS, PROFILES, ACTIVITY))
    bar = _progress_bar(total, progress)
    _JOB = job
    try:
        if job.shares == 1 or total < parallel_from:
            job.shares = 1
            counter = _BarCounter(bar)
            refused = [Counter[str]() for _ in rule_sets]
            events = decode_records(records, rule_sets, future_check=future_check,
                                    skip=skip, refused=refused)
            result = replay_events(events, rule_sets, job.accounts.__contains__, count_from,
                                   tick=counter)
            result.refused = refused
            return result
        ctx = multiprocessing.get_context("fork")
        _COUNTER = ctx.Value("q", 0)
        with ctx.Pool(job.shares) as pool:
            pending = pool.map_async(_run_share, range(job.shares))
            seen = 0
            while not pending.ready():
                pending.wait(0.2)
                now = _COUNTER.value
                if bar is not None:
                    bar.update(now - seen)
                seen = now
            parts = pending.get()
        result = ReplayResult(best=[{} for _ in rule_sets],
                              refused=[Counter() for _ in rule_sets])
        for part in parts:
            result.merge(part)
        result.decisions.sort(key=lambda d: (d.occurred_at, d.lead_id, d.rules_index))
        return result
    finally:
        _JOB = None
        _COUNTER = None
        if bar is not None:
            bar.close()


class _BarCounter:
    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def __call__(self, n: int) -> None:
        if self.bar is not None and n:
            self.bar.update(n)


def _progress_bar(total: int, wanted: bool) -> Any:
    """A tqdm bar on stderr for long runs; none when stderr is not a terminal."""
    if not wanted or not sys.stderr.isatty() or total < 50_000:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="ev", unit_scale=True, desc="replay", file=sys.stderr,
                mininterval=0.5)


def throughput(events: int, seconds: float) -> str:
    return f"{events:,} events in {seconds:.2f} s ({events / max(seconds, 1e-9):,.0f} events/s)"


def decided_json(d: Decided) -> dict[str, Any]:
    return {"lead_id": d.lead_id, "type": d.type, "cycle": d.cycle, "path": d.path,
            "occurred_at": datetime.fromtimestamp(d.occurred_at, UTC).isoformat(),
            "triggered_by": d.triggered_by, "sla_class": d.sla_class}


def timed(fn: Callable[[], ReplayResult]) -> tuple[ReplayResult, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def dumps(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()
