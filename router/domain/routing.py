"""Routing (SPEC §4) as pure functions: an SQL in, an assignment or a queue entry out, with the
trace of every rep considered. No Kafka, no clock: `now` is an argument.

Everything here runs in one place per routing partition (router/worker/app.py sends every
routing input through one ordered stage), so the routing state is never shared between two
deciders: round-robin cursors, open leads per rep and queues stay exact under any number of
workers.

This module holds rep eligibility and the deciding (route, drain_queues, activity from the
rep holding a lead); the state, its storage and the Decision records are in
router.domain.routing_state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from router.domain.business_hours import add_business_time
from router.domain.events import NamedAccount, OutOfOffice, Rep, SalesActivityType, SlaClass
from router.domain.routing_state import Decision, Holding, Queued, RouteRequest, RoutingState
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


# (countries, employees_min, employees_max, pool) per territory, and the fallback pool
_Territories = tuple[tuple[tuple[frozenset[str], int | None, int | None, str], ...], str]
_TERRITORIES: dict[int, tuple[Rules, _Territories]] = {}  # id(rules) -> (rules, territories)


def _territories(rules: Rules) -> _Territories:
    """The rules' territories as plain tuples, once per (frozen) rule set: a drain of the
    queues maps every queued lead to its pool, and pydantic attributes cost on each read."""
    held = _TERRITORIES.get(id(rules))
    if held is not None and held[0] is rules:  # `is`: an id is reused once its object is gone
        return held[1]
    table = (tuple((t.countries, t.employees_min, t.employees_max, t.pool)
                   for t in rules.routing.territories), rules.routing.fallback_pool)
    if len(_TERRITORIES) >= 64:  # a long-lived process sees a handful; tests build thousands
        _TERRITORIES.clear()
    _TERRITORIES[id(rules)] = (rules, table)
    return table


def territory_pool(request: RouteRequest, rules: Rules) -> str:
    """The pool the rules map a lead to, before looking at who is in it."""
    territories, fallback = _territories(rules)
    country, employees = request.country, request.employees
    for countries, employees_min, employees_max, pool in territories:
        if countries and country not in countries:
            continue
        if employees_min is not None and (employees is None or employees < employees_min):
            continue
        if employees_max is not None and (employees is None or employees > employees_max):
            continue
        return pool
    return fallback


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


Needs = tuple[str | None, str, str | None]


def _route_needs(request: RouteRequest, accounts: Mapping[str, NamedAccount], rules: Rules
                 ) -> Needs:
    """Everything decide_route's answer depends on besides the roster, the clock and the
    state: the named account's owner (its backup follows from the owner), the territory pool
    and the language group. Requests alike in these get the same answer in the same state."""
    owner = None
    for d in request.account_domains:  # the first domain that is a named account
        if d in accounts:
            owner = accounts[d].owner_rep_id
            break
    return (owner, territory_pool(request, rules), request.language)


class NeedsCache:
    """_route_needs of queued requests, kept across drains, for a caller whose named accounts
    and rules do not change (the simulator: a long queue is walked on every freed slot, and
    working out each queued lead's needs again was most of its routing time). The worker's
    accounts change while leads wait, so it passes none."""

    def __init__(self, accounts: Mapping[str, NamedAccount], rules: Rules) -> None:
        self.accounts = accounts
        self.rules = rules
        # id(request) -> (the request, its needs); drain_queues reads it without a call
        self.held: dict[int, tuple[RouteRequest, Needs]] = {}

    def __call__(self, request: RouteRequest) -> Needs:
        held = self.held.get(id(request))
        if held is not None and held[0] is request:  # `is`: ids are reused once freed
            return held[1]
        needs = _route_needs(request, self.accounts, self.rules)
        self.held[id(request)] = (request, needs)
        return needs


def drain_queues(
    roster: Mapping[str, Rep],
    accounts: Mapping[str, NamedAccount],
    state: RoutingState,
    rules: Rules,
    now: datetime,
    needs_cache: NeedsCache | None = None,
) -> list[Decision]:
    """Assign queued leads that someone can take now, oldest first in each pool.

    A lead nobody can take yet stays in place and does not block the ones behind it (they may
    need another language group); the SLA clock of a queued lead started when it was queued.
    `needs_cache` (for these same accounts and rules) remembers each queued lead's needs.
    """
    assert needs_cache is None or (needs_cache.accounts is accounts
                                   and needs_cache.rules is rules)
    out: list[Decision] = []
    budget = rules.routing.queue_drain_batch
    # Leads that nobody could take, by what that answer depended on. Until the next
    # assignment only fills slots, so a later lead with the same needs fails too; an
    # assignment may also free its lead's old slot, so it clears what was learned. Without
    # this, every freed slot re-decides the whole queue (quadratic in a long backlog).
    blocked: set[Needs] = set()
    for pool in sorted(state.queues):
        queue = state.queues[pool]
        remaining: list[Queued] = []
        for q in queue:
            if budget <= 0:
                remaining.append(q)
                continue
            request = q.request
            if needs_cache is not None:  # its dict read here: a call per queued lead costs
                held = needs_cache.held.get(id(request))
                needs = held[1] if held is not None and held[0] is request else \
                    needs_cache(request)
            else:
                needs = _route_needs(request, accounts, rules)
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
