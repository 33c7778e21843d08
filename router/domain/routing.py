"""Routing (SPEC §4) as pure functions: an SQL in, an assignment or a queue entry out, with the
trace of every rep considered. No Kafka, no clock: `now` is an argument.

Everything here runs in one place per routing partition (router/worker/app.py sends every
routing input through one ordered stage), so the state below is never shared between two
deciders: round-robin cursors, open leads per rep and queues stay exact under any number of
workers.

State:
- `holdings`: lead_id -> who holds the lead in its current cycle (rep, pool, SLA clock, open?).
  Open leads per rep are derived from it (an index rebuilt on load, never stored twice).
- `cursors`: "pool|language group" -> (last rep chosen, consecutive turns it has had).
- `queues`: pool -> leads waiting, in arrival order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from router.domain.business_hours import add_business_time
from router.domain.events import NamedAccount, OutOfOffice, Rep, SalesActivityType, SlaClass
from router.domain.rules import Rules

TERMINAL_ACTIVITY = frozenset(
    {
        SalesActivityType.REJECTED,
        SalesActivityType.DISQUALIFIED,
        SalesActivityType.CONVERTED,
        SalesActivityType.RELEASED,
    }
)
CLOSING_ACTIVITY = TERMINAL_ACTIVITY | {SalesActivityType.ACCEPTED}  # frees a capacity slot


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What routing needs to know about one SQL (built by the qualifier from its state)."""

    lead_id: str
    cycle: int
    sla_class: SlaClass
    country: str | None = None
    language: str | None = None
    employees: int | None = None
    account_domains: tuple[str, ...] = ()
    sql_event_id: str = ""
    received_at: float = 0.0  # wall time the triggering input was processed (latency metric)

    def to_json(self) -> dict[str, Any]:
        return {
            "lead_id": self.lead_id,
            "cycle": self.cycle,
            "sla_class": self.sla_class.value,
            "country": self.country,
            "language": self.language,
            "employees": self.employees,
            "account_domains": list(self.account_domains),
            "sql_event_id": self.sql_event_id,
            "received_at": self.received_at,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RouteRequest:
        return cls(
            lead_id=raw["lead_id"],
            cycle=raw["cycle"],
            sla_class=SlaClass(raw["sla_class"]),
            country=raw.get("country"),
            language=raw.get("language"),
            employees=raw.get("employees"),
            account_domains=tuple(raw.get("account_domains") or ()),
            sql_event_id=raw.get("sql_event_id", ""),
            received_at=raw.get("received_at", 0.0),
        )


@dataclass(slots=True)
class Holding:
    lead_id: str
    cycle: int
    rep_id: str
    pool: str
    rule: str
    seq: int  # assignments of this lead in this cycle (1 = first; reassignments count up)
    sla_class: SlaClass
    started_at: float
    due_at: float
    open: bool = True
    first_touch_at: float | None = None
    request: RouteRequest | None = None
    ended_by: str | None = None  # the activity that ended this cycle's holding (rejected, ...)
    warn_at: float = 0.0  # when the SLA warning is due (warning_fraction of the budget)
    warned: bool = False
    breached: bool = False
    breached_by: tuple[str, ...] = ()  # reps that let this lead's clock run out this cycle

    @property
    def clock_running(self) -> bool:
        """The SLA clock runs from assignment until first touch, a breach, or the end."""
        return self.first_touch_at is None and self.ended_by is None and not self.breached


@dataclass(slots=True)
class Queued:
    request: RouteRequest
    pool: str
    queued_at: float
    due_at: float
    warn_at: float = 0.0
    warned: bool = False
    breached: bool = False


@dataclass(slots=True)
class Decision:
    """One routing outcome; the adapter turns it into an Assignment event."""

    type: str  # lead.assigned | lead.queued | lead.reassigned
    lead_id: str
    cycle: int
    seq: int
    rep_id: str | None
    pool: str
    rule: str | None
    trace: list[dict[str, str]]
    sla_class: SlaClass
    started_at: float
    due_at: float
    received_at: float = 0.0

    @property
    def event_id(self) -> str:
        if self.type == "lead.queued":
            return f"{self.lead_id}:c{self.cycle}:queued"
        return f"{self.lead_id}:c{self.cycle}:assign:{self.seq}"


@dataclass
class RoutingState:
    holdings: dict[str, Holding] = field(default_factory=dict)
    cursors: dict[str, tuple[str, int]] = field(default_factory=dict)
    queues: dict[str, list[Queued]] = field(default_factory=dict)
    open_by_rep: dict[str, set[str]] = field(default_factory=dict)  # derived from holdings
    timed: set[str] = field(default_factory=set)  # derived: leads whose SLA clock runs
    dirty: set[str] = field(default_factory=set)  # storage keys changed since the last flush

    # ---- derived index -------------------------------------------------------------------

    def open_count(self, rep_id: str) -> int:
        return len(self.open_by_rep.get(rep_id, ()))

    def _index(self, h: Holding) -> None:
        if h.open:
            self.open_by_rep.setdefault(h.rep_id, set()).add(h.lead_id)
        if h.clock_running:
            self.timed.add(h.lead_id)

    def touched(self, h: Holding) -> None:
        """Record a change to `h` (SLA flags, first touch): storage and the clock index."""
        if h.clock_running:
            self.timed.add(h.lead_id)
        else:
            self.timed.discard(h.lead_id)
        self.dirty.add(f"lead:{h.lead_id}")

    def _unindex(self, h: Holding) -> None:
        self.timed.discard(h.lead_id)
        leads = self.open_by_rep.get(h.rep_id)
        if leads is not None:
            leads.discard(h.lead_id)
            if not leads:
                del self.open_by_rep[h.rep_id]

    def hold(self, h: Holding) -> None:
        old = self.holdings.get(h.lead_id)
        if old is not None:
            self._unindex(old)
        self.holdings[h.lead_id] = h
        self._index(h)
        self.dirty.add(f"lead:{h.lead_id}")

    def close(self, lead_id: str, ended_by: str | None = None) -> Holding | None:
        """Free the rep's slot; `ended_by` also ends the holding (kept, so a repeated request
        for the same cycle is recognised and later activity on it is refused)."""
        h = self.holdings.get(lead_id)
        if h is None:
            return None
        self._unindex(h)
        h.open = False
        if ended_by is not None:
            h.ended_by = ended_by
        self.touched(h)
        return h

    def is_queued(self, lead_id: str, cycle: int) -> bool:
        return any(
            q.request.lead_id == lead_id and q.request.cycle >= cycle
            for queue in self.queues.values()
            for q in queue
        )

    # ---- storage: one record per lead, per cursor and per pool queue ------------------------

    def flush(self) -> dict[str, bytes | None]:
        """Changed records since the last flush (None = delete), keyed by storage key."""
        out: dict[str, bytes | None] = {}
        for key in sorted(self.dirty):
            kind, _, name = key.partition(":")
            if kind == "lead":
                h = self.holdings.get(name)
                out[key] = None if h is None else orjson.dumps(_holding_json(h))
            elif kind == "cursor":
                cursor = self.cursors.get(name)
                out[key] = None if cursor is None else orjson.dumps(list(cursor))
            elif kind == "queue":
                queue = self.queues.get(name)
                out[key] = None if not queue else orjson.dumps([_queued_json(q) for q in queue])
        self.dirty.clear()
        return out

    @classmethod
    def load(cls, records: Mapping[str, bytes]) -> RoutingState:
        state = cls()
        for key, value in records.items():
            kind, _, name = key.partition(":")
            raw = orjson.loads(value)
            if kind == "lead":
                state.hold(_holding_from(raw))
            elif kind == "cursor":
                state.cursors[name] = (raw[0], raw[1])
            elif kind == "queue":
                state.queues[name] = [_queued_from(q) for q in raw]
        state.dirty.clear()
        return state


def _holding_json(h: Holding) -> dict[str, Any]:
    return {
        "lead_id": h.lead_id, "cycle": h.cycle, "rep_id": h.rep_id, "pool": h.pool,
        "rule": h.rule, "seq": h.seq, "sla_class": h.sla_class.value,
        "started_at": h.started_at, "due_at": h.due_at, "open": h.open,
        "first_touch_at": h.first_touch_at,
        "request": h.request.to_json() if h.request else None,
        "ended_by": h.ended_by,
        "warn_at": h.warn_at, "warned": h.warned, "breached": h.breached,
        "breached_by": list(h.breached_by),
    }


def _holding_from(raw: Mapping[str, Any]) -> Holding:
    return Holding(
        lead_id=raw["lead_id"], cycle=raw["cycle"], rep_id=raw["rep_id"], pool=raw["pool"],
        rule=raw["rule"], seq=raw["seq"], sla_class=SlaClass(raw["sla_class"]),
        started_at=raw["started_at"], due_at=raw["due_at"], open=raw["open"],
        first_touch_at=raw.get("first_touch_at"),
        request=RouteRequest.from_json(raw["request"]) if raw.get("request") else None,
        ended_by=raw.get("ended_by"),
        warn_at=raw.get("warn_at", 0.0), warned=raw.get("warned", False),
        breached=raw.get("breached", False), breached_by=tuple(raw.get("breached_by", ())),
    )


def _queued_json(q: Queued) -> dict[str, Any]:
    return {"request": q.request.to_json(), "pool": q.pool, "queued_at": q.queued_at,
            "due_at": q.due_at, "warn_at": q.warn_at, "warned": q.warned,
            "breached": q.breached}


def _queued_from(raw: Mapping[str, Any]) -> Queued:
    return Queued(RouteRequest.from_json(raw["request"]), raw["pool"], raw["queued_at"],
                  raw["due_at"], raw.get("warn_at", 0.0), raw.get("warned", False),
                  raw.get("breached", False))


# --------------------------------------------------------------------------------------------
# Rep eligibility
# --------------------------------------------------------------------------------------------


def current_out_of_office(rep: Rep, now: datetime) -> OutOfOffice | None:
    for window in rep.out_of_office:
        if window.start <= now < window.end:
            return window
    return None


def _until(window: OutOfOffice) -> str:
    return "until " + window.end.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def skip_reason(rep: Rep, state: RoutingState, now: datetime, check_capacity: bool = True
                ) -> tuple[str, str] | None:
    """Why `rep` cannot take a lead now, as (reason, detail); None when it can."""
    if not rep.active:
        return "inactive", "marked inactive"
    window = current_out_of_office(rep, now)
    if window is not None:
        return "out_of_office", _until(window)
    if check_capacity:
        count = state.open_count(rep.rep_id)
        if count >= rep.max_open_leads:
            return "at_capacity", f"{count}/{rep.max_open_leads} open"
    return None


# --------------------------------------------------------------------------------------------
# Deciding
# --------------------------------------------------------------------------------------------


def territory_pool(request: RouteRequest, rules: Rules) -> str:
    """The pool the rules map a lead to, before looking at who is in it."""
    for t in rules.routing.territories:
        if t.countries and request.country not in t.countries:
            continue
        if t.employees_min is not None and (
            request.employees is None or request.employees < t.employees_min
        ):
            continue
        if t.employees_max is not None and (
            request.employees is None or request.employees > t.employees_max
        ):
            continue
        return t.pool
    return rules.routing.fallback_pool


def pool_members(pool: str, roster: Mapping[str, Rep]) -> list[Rep]:
    """Active reps of a pool in stable order (rep_id ascending)."""
    return sorted(
        (r for r in roster.values() if pool in r.pools and r.active), key=lambda r: r.rep_id
    )


def sla_deadline(sla_class: SlaClass, started: datetime, rep: Rep | None, rules: Rules,
                 fraction: float = 1.0) -> datetime:
    """When `fraction` of the SLA budget has passed (1.0: the deadline; the warning uses
    `sla.warning_fraction`). Behavioural budgets count in the rep's working hours."""
    if sla_class is SlaClass.HIGH_INTENT:
        return started + timedelta(minutes=rules.sla.high_intent_minutes * fraction)
    budget = timedelta(hours=rules.sla.behavioural_business_hours * fraction)
    if rep is not None:
        hours: dict[str, tuple[str, str]] = {str(k): v for k, v in rep.working_hours.items()}
        return add_business_time(started, budget, hours, rep.timezone)  # Rep checks its hours
    return add_business_time(
        started, budget, rules.sla.default_working_hours, rules.sla.default_timezone
    )


@dataclass(slots=True)
class _Choice:
    rep: Rep
    rule: str
    cursor_key: str | None = None


def _named_account(
    request: RouteRequest,
    roster: Mapping[str, Rep],
    accounts: Mapping[str, NamedAccount],
    state: RoutingState,
    rules: Rules,
    now: datetime,
    trace: list[dict[str, str]],
    exclude: frozenset[str],
) -> _Choice | None:
    account = next((accounts[d] for d in request.account_domains if d in accounts), None)
    if account is None:
        return None
    check_capacity = not rules.routing.named_account_ignores_capacity
    owner = roster.get(account.owner_rep_id)
    if owner is None:
        trace.append({"rep_id": account.owner_rep_id, "skipped": "not_on_roster",
                      "detail": f"owner of {account.account_domain}"})
        return None
    if owner.rep_id in exclude:
        trace.append({"rep_id": owner.rep_id, "skipped": "excluded",
                      "detail": f"owner of {account.account_domain}, breached this lead"})
        return None
    reason = skip_reason(owner, state, now, check_capacity)
    if reason is None:
        trace.append({"rep_id": owner.rep_id, "chosen": "named_account",
                      "detail": f"owner of {account.account_domain}"})
        return _Choice(owner, "named_account")
    trace.append({"rep_id": owner.rep_id, "skipped": reason[0], "detail": reason[1]})
    window = current_out_of_office(owner, now) if reason[0] == "out_of_office" else None
    if window is None or window.backup_rep_id is None:
        if reason[0] == "out_of_office":
            trace[-1]["detail"] += ", no backup"
        return None
    backup = roster.get(window.backup_rep_id)
    if backup is None or backup.rep_id in exclude:
        trace.append({"rep_id": window.backup_rep_id, "skipped": "not_on_roster"
                      if backup is None else "excluded", "detail": "backup of the owner"})
        return None
    reason = skip_reason(backup, state, now, check_capacity)
    if reason is not None:
        trace.append({"rep_id": backup.rep_id, "skipped": reason[0], "detail": reason[1]})
        return None
    trace.append({"rep_id": backup.rep_id, "chosen": "named_account_backup",
                  "detail": f"backup of {owner.rep_id}"})
    return _Choice(backup, "named_account_backup")


def _round_robin(
    pool: str,
    request: RouteRequest,
    roster: Mapping[str, Rep],
    state: RoutingState,
    rules: Rules,
    now: datetime,
    trace: list[dict[str, str]],
    exclude: frozenset[str],
) -> _Choice | None:
    candidates = pool_members(pool, roster)
    if exclude:
        # reps who breached this lead are out before the language filter: a breached lead is
        # better served by another rep of the pool than by nobody (SPEC §5)
        for rep in candidates:
            if rep.rep_id in exclude:
                trace.append({"rep_id": rep.rep_id, "skipped": "excluded",
                              "detail": "breached this lead's SLA"})
        candidates = [r for r in candidates if r.rep_id not in exclude]
    group = "*"
    rule = "fallback" if pool == rules.routing.fallback_pool else "round_robin"
    if request.language:
        speakers = [r for r in candidates if request.language in r.languages]
        if speakers:
            candidates, group = speakers, request.language
            if rule == "round_robin":
                rule = "language_round_robin"
        else:
            trace.append({"skipped": "language_unmatched",
                          "detail": f"nobody in {pool} speaks {request.language};"
                                    " all reps kept"})
    cursor_key = f"{pool}|{group}"
    last, turns = state.cursors.get(cursor_key, ("", 0))
    ids = [r.rep_id for r in candidates]
    # position after the last rep chosen (by rep_id order, so a removed rep keeps its place)
    start = next((i for i, rep_id in enumerate(ids) if rep_id > last), 0)
    order = candidates[start:] + candidates[:start]
    if last in ids:
        held = candidates[ids.index(last)]
        if turns < held.weight:  # weighted reps take `weight` consecutive turns
            order = [held] + [r for r in order if r.rep_id != last]
    for rep in order:
        reason = skip_reason(rep, state, now)
        if reason is not None:
            trace.append({"rep_id": rep.rep_id, "skipped": reason[0], "detail": reason[1]})
            continue
        trace.append({"rep_id": rep.rep_id, "chosen": rule})
        return _Choice(rep, rule, cursor_key)
    return None


def decide_route(
    request: RouteRequest,
    roster: Mapping[str, Rep],
    accounts: Mapping[str, NamedAccount],
    state: RoutingState,
    rules: Rules,
    now: datetime,
    *,
    exclude: frozenset[str] = frozenset(),
) -> tuple[_Choice | None, str, list[dict[str, str]]]:
    """Who gets the lead (None: nobody eligible), the pool, and the trace. Changes nothing."""
    trace: list[dict[str, str]] = []
    choice = _named_account(request, roster, accounts, state, rules, now, trace, exclude)
    pool = territory_pool(request, rules)
    if choice is not None:  # reported under the rep's own (first) pool, where it works
        return choice, (choice.rep.pools[0] if choice.rep.pools else pool), trace
    if pool != rules.routing.fallback_pool and not pool_members(pool, roster):
        trace.append({"skipped": "pool_without_reps",
                      "detail": f"pool {pool} has no active reps; using"
                                f" {rules.routing.fallback_pool}"})
        pool = rules.routing.fallback_pool
    choice = _round_robin(pool, request, roster, state, rules, now, trace, exclude)
    return choice, pool, trace


def _commit_choice(state: RoutingState, choice: _Choice) -> None:
    if choice.cursor_key is None:
        return
    last, turns = state.cursors.get(choice.cursor_key, ("", 0))
    turns = turns + 1 if last == choice.rep.rep_id else 1
    state.cursors[choice.cursor_key] = (choice.rep.rep_id, turns)
    state.dirty.add(f"cursor:{choice.cursor_key}")


def route(
    request: RouteRequest,
    roster: Mapping[str, Rep],
    accounts: Mapping[str, NamedAccount],
    state: RoutingState,
    rules: Rules,
    now: datetime,
) -> list[Decision]:
    """Route one SQL: assigned, or queued in its pool. A repeated request changes nothing."""
    held = state.holdings.get(request.lead_id)
    if (held is not None and held.cycle >= request.cycle) or state.is_queued(
        request.lead_id, request.cycle
    ):
        return []
    choice, pool, trace = decide_route(request, roster, accounts, state, rules, now)
    ts = now.timestamp()
    if choice is None:
        due = sla_deadline(request.sla_class, now, None, rules)
        warn = sla_deadline(request.sla_class, now, None, rules, rules.sla.warning_fraction)
        state.queues.setdefault(pool, []).append(
            Queued(request, pool, ts, due.timestamp(), warn.timestamp()))
        state.dirty.add(f"queue:{pool}")
        trace.append({"skipped": "nobody_eligible", "detail": f"queued in {pool}"})
        return [Decision("lead.queued", request.lead_id, request.cycle, 0, None, pool, None,
                         trace, request.sla_class, ts, due.timestamp(), request.received_at)]
    return [assign_lead(state, request, choice, pool, trace, rules, started=now, seq=1,
                    kind="lead.assigned")]


def assign_lead(state: RoutingState, request: RouteRequest, choice: _Choice, pool: str,
            trace: list[dict[str, str]], rules: Rules, *, started: datetime, seq: int,
            kind: str, rule: str | None = None, breached_by: tuple[str, ...] = (),
            from_queue: Queued | None = None) -> Decision:
    """Give the lead to the chosen rep; the previous holder (if any) loses its slot."""
    _commit_choice(state, choice)
    due = sla_deadline(request.sla_class, started, choice.rep, rules)
    warn = sla_deadline(request.sla_class, started, choice.rep, rules,
                        rules.sla.warning_fraction)
    rule = rule or choice.rule
    state.hold(Holding(
        lead_id=request.lead_id, cycle=request.cycle, rep_id=choice.rep.rep_id, pool=pool,
        rule=rule, seq=seq, sla_class=request.sla_class,
        started_at=started.timestamp(), due_at=due.timestamp(), request=request,
        warn_at=warn.timestamp(), breached_by=breached_by,
        # a clock that already warned or ran out in the queue does not fire again
        warned=from_queue.warned if from_queue else False,
        breached=from_queue.breached if from_queue else False,
    ))
    return Decision(kind, request.lead_id, request.cycle, seq, choice.rep.rep_id, pool,
                    rule, trace, request.sla_class, started.timestamp(),
                    due.timestamp(), request.received_at)


def _route_needs(request: RouteRequest, accounts: Mapping[str, NamedAccount], rules: Rules
                 ) -> tuple[str | None, str, str | None]:
    """Everything decide_route's answer depends on besides the roster, the clock and the
    state: the named account's owner (its backup follows from the owner), the territory pool
    and the language group. Requests alike in these get the same answer in the same state."""
    account = next((accounts[d] for d in request.account_domains if d in accounts), None)
    return (account.owner_rep_id if account is not None else None,
            territory_pool(request, rules), request.language)


def drain_queues(
    roster: Mapping[str, Rep],
    accounts: Mapping[str, NamedAccount],
    state: RoutingState,
    rules: Rules,
    now: datetime,
) -> list[Decision]:
    """Assign queued leads that someone can take now, oldest first in each pool.

    A lead nobody can take yet stays in place and does not block the ones behind it (they may
    need another language group); the SLA clock of a queued lead started when it was queued.
    """
    out: list[Decision] = []
    budget = rules.routing.queue_drain_batch
    # Leads that nobody could take, by what that answer depended on. Until the next
    # assignment only fills slots, so a later lead with the same needs fails too; an
    # assignment may also free its lead's old slot, so it clears what was learned. Without
    # this, every freed slot re-decides the whole queue (quadratic in a long backlog).
    blocked: set[tuple[str | None, str, str | None]] = set()
    for pool in sorted(state.queues):
        queue = state.queues[pool]
        remaining: list[Queued] = []
        for q in queue:
            if budget <= 0:
                remaining.append(q)
                continue
            needs = _route_needs(q.request, accounts, rules)
            if needs in blocked:
                remaining.append(q)
                continue
            choice, chosen_pool, trace = decide_route(q.request, roster, accounts, state, rules,
                                                      now)
            if choice is None:
                blocked.add(needs)
                remaining.append(q)
                continue
            blocked.clear()
            budget -= 1
            trace.append({"detail": "from the queue of " + pool})
            started = datetime.fromtimestamp(q.queued_at, UTC)
            out.append(assign_lead(state, q.request, choice, chosen_pool, trace, rules,
                               started=started, seq=1, kind="lead.assigned", from_queue=q))
        if len(remaining) != len(queue):
            state.dirty.add(f"queue:{pool}")
            if remaining:
                state.queues[pool] = remaining
            else:
                del state.queues[pool]
    return out


def holder_problem(state: RoutingState, lead_id: str, rep_id: str) -> str | None:
    """Why activity from `rep_id` on `lead_id` must be refused (SPEC §2.1), or None."""
    h = state.holdings.get(lead_id)
    if h is None:
        return f"field 'rep_id': lead {lead_id} is not assigned to anyone"
    if h.rep_id != rep_id:
        return f"field 'rep_id': {rep_id} does not hold lead {lead_id} (it is held by {h.rep_id})"
    if h.ended_by is not None:
        return f"field 'rep_id': {rep_id} no longer holds lead {lead_id} ({h.ended_by})"
    return None


def record_first_touch(state: RoutingState, h: Holding, touched: datetime) -> bool:
    """Only the first contact attempt counts; it stops the SLA clock. False for a repeat."""
    if h.first_touch_at is not None:
        return False
    h.first_touch_at = touched.timestamp()
    state.touched(h)
    return True


def apply_activity(state: RoutingState, lead_id: str, rep_id: str, kind: SalesActivityType,
                   occurred_at: datetime) -> Holding | None:
    """Capacity accounting for a rep's action on a lead it holds (checked by holder_problem).

    Returns the holding when a capacity slot was freed (so the caller drains the queues)."""
    h = state.holdings[lead_id]
    assert h.rep_id == rep_id
    if kind is SalesActivityType.FIRST_TOUCH:
        record_first_touch(state, h, occurred_at)  # the SLA outcome: router.domain.sla
        return None
    if kind not in CLOSING_ACTIVITY:
        return None
    was_open = h.open
    # accepted frees the slot but the rep still works the lead; the others end the holding
    state.close(lead_id, None if kind is SalesActivityType.ACCEPTED else kind.value)
    return h if was_open else None
