"""Properties of routing (SPEC §4) over random rosters and random SQL/activity sequences.

After every step: no rep goes over `max_open_leads` through round-robin, nobody inactive or out
of office is chosen, every SQL is assigned or queued (never dropped, never both), a lead is
queued only when nobody could take it, a drain leaves no lead someone could take, the open-lead
index matches the holdings, and over any window in which a round-robin group's eligible set
does not change, equal-weight reps get assignment counts within one turn-run of each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from router.domain.events import NamedAccount, Rep, SalesActivityType, SlaClass
from router.domain.routing import (
    NeedsCache,
    apply_activity,
    decide_route,
    drain_queues,
    holder_problem,
    pool_members,
    route,
    skip_reason,
    territory_pool,
)
from router.domain.routing_state import Decision, RouteRequest, RoutingState
from router.domain.rules import load_rules

RULES = load_rules()
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
SETTINGS = settings(max_examples=150, deadline=None)
POOLS = ("NA", "EMEA", "global")
LANGUAGES = ("en", "de", "es")
COUNTRIES = ("US", "DE", "JP", None)  # JP: APAC has no reps here, so it falls back to global
ROUND_ROBIN_RULES = frozenset({"round_robin", "language_round_robin", "fallback"})
ACCOUNT = "bigco.com"


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


@st.composite
def rosters(draw: st.DrawFn, stable: bool = False) -> dict[str, Rep]:
    """1-8 reps in 1-3 pools; `stable`: all active, never away, capacity to spare."""
    n = draw(st.integers(1, 8))
    ids = [f"R{i}" for i in range(n)]
    pools_used = draw(st.lists(st.sampled_from(POOLS), min_size=1, max_size=3, unique=True))
    reps: dict[str, Rep] = {}
    for rep_id in draw(st.permutations(ids)):  # roster order must not matter
        windows = []
        for _ in range(0 if stable else draw(st.integers(0, 2))):
            start = draw(st.integers(-60, 600))
            length = draw(st.integers(1, 300))
            backup = draw(st.one_of(st.none(), st.sampled_from([*ids, "R-gone"])))
            windows.append({"start": (T0 + timedelta(minutes=start)).isoformat(),
                            "end": (T0 + timedelta(minutes=start + length)).isoformat(),
                            "backup_rep_id": backup})
        reps[rep_id] = Rep.model_validate({
            "rep_id": rep_id,
            "active": stable or draw(st.sampled_from([True, True, True, False])),
            "pools": sorted({*draw(st.lists(st.sampled_from(pools_used), min_size=1, max_size=3,
                                            unique=True)), *(["global"] if stable else [])}),
            "languages": draw(st.lists(st.sampled_from(LANGUAGES), max_size=2, unique=True)),
            "max_open_leads": 1000 if stable else draw(st.sampled_from([0, 1, 2, 3, 5, 12])),
            "weight": draw(st.sampled_from([1, 1, 1, 2, 3])),
            "out_of_office": windows,
        })
    return reps


Step = tuple[Any, ...]

PLAIN_SQL = st.tuples(st.just("route"), st.sampled_from(COUNTRIES),
                      st.sampled_from([None, *LANGUAGES, "fr"]), st.sampled_from(list(SlaClass)),
                      st.just(False))
NAMED_SQL = st.tuples(st.just("route"), st.sampled_from(COUNTRIES), st.sampled_from([None, "de"]),
                      st.sampled_from(list(SlaClass)), st.just(True))
ACTIVITY = st.tuples(st.just("activity"), st.integers(0, 1000),
                     st.sampled_from(list(SalesActivityType)),
                     st.sampled_from([False, False, False, False, True]))  # True: wrong rep
ADVANCE = st.tuples(st.just("advance"), st.integers(1, 120))
STEPS: st.SearchStrategy[Step] = st.one_of(PLAIN_SQL, PLAIN_SQL, PLAIN_SQL, NAMED_SQL, ACTIVITY,
                                           ACTIVITY, ADVANCE)
STEP_LISTS = st.lists(STEPS, min_size=10, max_size=60)


# --------------------------------------------------------------------------------------------
# The simulation and its checks
# --------------------------------------------------------------------------------------------


@dataclass
class Window:
    """Round-robin assignments of one cursor group while its eligible set stays the same."""

    eligible: frozenset[str]
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Sim:
    roster: dict[str, Rep]
    accounts: dict[str, NamedAccount]
    state: RoutingState = field(default_factory=RoutingState)
    now: datetime = T0
    routed: list[str] = field(default_factory=list)
    windows: dict[str, Window] = field(default_factory=dict)
    round_robin_assignments: int = 0
    needs: NeedsCache | None = None  # drains remember queued leads' needs (as simulate does)
    drained: list[Decision] = field(default_factory=list)

    # ---- an independent view of who is eligible ----

    def group(self, request: RouteRequest) -> tuple[str, str, list[Rep]]:
        """(pool, language group, candidates) round-robin would use for `request`."""
        pool = territory_pool(request, RULES)
        if pool != RULES.routing.fallback_pool and not pool_members(pool, self.roster):
            pool = RULES.routing.fallback_pool
        candidates = pool_members(pool, self.roster)
        speakers = [r for r in candidates if request.language in r.languages]
        if request.language and speakers:
            return pool, request.language, speakers
        return pool, "*", candidates

    def eligible(self, candidates: list[Rep]) -> frozenset[str]:
        return frozenset(r.rep_id for r in candidates
                         if skip_reason(r, self.state, self.now) is None)

    # ---- checks on decisions ----

    def check_decisions(self, decisions: list[Decision], drained: bool) -> None:
        open_now = {rep_id: self.state.open_count(rep_id) for rep_id in self.roster}
        # rebuild the open counts as they were before these decisions, then replay them
        for d in decisions:
            if d.rep_id is not None:
                open_now[d.rep_id] = open_now.get(d.rep_id, 0) - 1
        for d in decisions:
            if d.type == "lead.queued":
                assert not drained
                continue
            assert d.type == "lead.assigned"
            rep = self.roster[d.rep_id or ""]
            assert rep.active, f"inactive {rep.rep_id} chosen"
            assert not any(w.start <= self.now < w.end for w in rep.out_of_office), (
                f"{rep.rep_id} chosen while out of office")
            before = open_now[rep.rep_id]
            if d.rule in ROUND_ROBIN_RULES:
                self.round_robin_assignments += 1
                assert before < rep.max_open_leads, (
                    f"{rep.rep_id} given a lead at {before}/{rep.max_open_leads} open")
                assert d.pool in rep.pools
            open_now[rep.rep_id] = before + 1
            if drained and d.rule in ROUND_ROBIN_RULES:
                held = self.state.holdings[d.lead_id]
                assert held.request is not None
                _, group, _ = self.group(held.request)
                self.windows.pop(f"{d.pool}|{group}", None)  # set changed around a drain

    def check_state(self) -> None:
        state = self.state
        held = set(state.holdings)
        queued = [q.request.lead_id for queue in state.queues.values() for q in queue]
        assert len(queued) == len(set(queued)), "a lead queued twice"
        assert held.isdisjoint(queued), "a lead both assigned and queued"
        assert set(self.routed) == held | set(queued), "an SQL was dropped"
        # the derived index matches the holdings
        index: dict[str, set[str]] = {}
        for h in state.holdings.values():
            if h.open:
                index.setdefault(h.rep_id, set()).add(h.lead_id)
        assert state.open_by_rep == index
        for pool, queue in state.queues.items():
            assert queue, f"empty queue {pool} kept"
            for q in queue:
                assert q.pool == pool

    def check_drained(self) -> None:
        """After a drain, nobody could take any lead still queued."""
        if sum(len(q) for q in self.state.queues.values()) > RULES.routing.queue_drain_batch:
            return
        for queue in self.state.queues.values():
            for q in queue:
                choice, _, _ = decide_route(q.request, self.roster, self.accounts, self.state,
                                            RULES, self.now)
                assert choice is None, f"{q.request.lead_id} left queued though someone is free"

    # ---- steps ----

    def route(self, country: str | None, language: str | None, sla: SlaClass,
              named: bool) -> None:
        lead = f"L{len(self.routed)}"
        request = RouteRequest(lead, 1, sla, country=country, language=language,
                               account_domains=(ACCOUNT,) if named else ())
        pool, group, candidates = self.group(request)
        eligible = self.eligible(candidates)
        decisions = route(request, self.roster, self.accounts, self.state, RULES, self.now)
        self.routed.append(lead)
        assert len(decisions) == 1 and decisions[0].lead_id == lead
        d = decisions[0]
        self.check_decisions(decisions, drained=False)
        if d.type == "lead.queued":
            assert eligible == frozenset(), f"queued while {sorted(eligible)} could take it"
            assert d.pool == pool
            assert route(request, self.roster, self.accounts, self.state, RULES, self.now) == []
            return
        assert route(request, self.roster, self.accounts, self.state, RULES, self.now) == []
        if d.rule not in ROUND_ROBIN_RULES:
            return
        assert (d.pool, d.rep_id in eligible) == (pool, True)
        key = f"{pool}|{group}"
        assert self.state.cursors[key][0] == d.rep_id
        window = self.windows.get(key)
        if window is None or window.eligible != eligible:
            window = self.windows[key] = Window(eligible)
        window.counts[d.rep_id or ""] = window.counts.get(d.rep_id or "", 0) + 1
        for a in eligible:
            for b in eligible:
                weight = self.roster[a].weight
                if self.roster[b].weight == weight:
                    gap = abs(window.counts.get(a, 0) - window.counts.get(b, 0))
                    # equal-weight reps take `weight` consecutive turns each: within any window
                    # their counts differ by at most one run (so by at most one for weight 1)
                    assert gap <= weight, (key, sorted(window.counts.items()), weight)

    def activity(self, pick: int, kind: SalesActivityType, wrong_rep: bool) -> None:
        live = sorted(lead for lead, h in self.state.holdings.items() if h.ended_by is None)
        if not live:
            return
        lead = live[pick % len(live)]
        holder = self.state.holdings[lead].rep_id
        if wrong_rep:
            other = next((r for r in sorted(self.roster) if r != holder), None)
            if other is not None:
                assert holder_problem(self.state, lead, other) is not None
            return
        assert holder_problem(self.state, lead, holder) is None
        was_open = self.state.holdings[lead].open
        freed = apply_activity(self.state, lead, holder, kind, self.now)
        closing = kind is not SalesActivityType.FIRST_TOUCH
        assert (freed is not None) == (was_open and closing)
        if kind not in (SalesActivityType.FIRST_TOUCH, SalesActivityType.ACCEPTED):
            assert holder_problem(self.state, lead, holder) is not None
        if freed is not None:
            self.drain()

    def advance(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)
        self.drain()

    def drain(self) -> None:
        queued_before = sum(len(q) for q in self.state.queues.values())
        decisions = drain_queues(self.roster, self.accounts, self.state, RULES, self.now,
                                 self.needs)
        self.drained += decisions
        assert len(decisions) <= queued_before
        assert len({d.lead_id for d in decisions}) == len(decisions)
        self.check_decisions(decisions, drained=True)
        self.check_drained()


def simulate(roster: dict[str, Rep], owner: str, steps: list[Step],
             needs_cache: bool = False) -> Sim:
    sim = Sim(roster, {ACCOUNT: NamedAccount(account_domain=ACCOUNT, owner_rep_id=owner)})
    if needs_cache:
        sim.needs = NeedsCache(sim.accounts, RULES)
    for step in steps:
        if step[0] == "route":
            sim.route(*step[1:])
        elif step[0] == "activity":
            sim.activity(*step[1:])
        else:
            sim.advance(*step[1:])
        sim.check_state()
    return sim


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(roster=rosters(), owner=st.sampled_from(["R0", "R1", "R-gone"]),
       steps=STEP_LISTS)
def test_routing_invariants(roster: dict[str, Rep], owner: str, steps: list[Step]) -> None:
    simulate(roster, owner, steps)


@SETTINGS
@given(roster=rosters(), owner=st.sampled_from(["R0", "R1", "R-gone"]),
       steps=STEP_LISTS)
def test_drains_that_remember_the_needs_decide_the_same(roster: dict[str, Rep], owner: str,
                                                        steps: list[Step]) -> None:
    """The simulator's NeedsCache (accounts and rules fixed) changes no drain's decisions."""
    plain = simulate(roster, owner, steps)
    cached = simulate(roster, owner, steps, needs_cache=True)
    assert cached.drained == plain.drained
    assert cached.state.flush() == plain.state.flush()


@SETTINGS
@given(roster=rosters(), steps=STEP_LISTS)
def test_state_reloaded_from_storage_decides_the_same(roster: dict[str, Rep],
                                                      steps: list[Step]) -> None:
    """What flush() stores is enough: a reloaded state carries on exactly like the live one."""
    sim = simulate(roster, "R0", steps)
    records = {k: v for k, v in sim.state.flush().items() if v is not None}
    loaded = RoutingState.load(records)
    assert loaded.open_by_rep == sim.state.open_by_rep
    later = sim.now + timedelta(hours=12)
    live = drain_queues(sim.roster, sim.accounts, sim.state, RULES, later)
    again = drain_queues(sim.roster, sim.accounts, loaded, RULES, later)
    assert again == live
    request = RouteRequest("L-next", 1, SlaClass.HIGH_INTENT, country="US", language="de")
    assert route(request, sim.roster, sim.accounts, loaded, RULES, later) == route(
        request, sim.roster, sim.accounts, sim.state, RULES, later)


@SETTINGS
@given(roster=rosters(stable=True), steps=st.lists(PLAIN_SQL, min_size=20, max_size=80))
def test_equal_weights_share_evenly_while_the_eligible_set_holds(
    roster: dict[str, Rep], steps: list[Step]
) -> None:
    """Nobody's eligibility changes here (and the fallback pool holds everyone, so every SQL is
    assigned), so each round-robin group is one long window."""
    sim = simulate(roster, "R-gone", steps)
    assert sum(sum(w.counts.values()) for w in sim.windows.values()) == len(steps)
    for key, window in sim.windows.items():
        pool, _, group = key.partition("|")
        assert window.eligible == {r.rep_id for r in pool_members(pool, roster)
                                   if group == "*" or group in r.languages}


def test_equal_weights_share_a_long_run_evenly() -> None:
    """A deterministic long run: with a fixed eligible set, counts never drift apart."""
    roster = {r: Rep(rep_id=r, pools=["global"], max_open_leads=1000) for r in "DBCA"}
    sim = Sim(roster, {})
    for _ in range(97):
        sim.route(None, None, SlaClass.HIGH_INTENT, False)
    counts = sim.windows["global|*"].counts
    assert sorted(counts.values()) == [24, 24, 24, 25]
    assert counts["A"] == 25
