"""SPEC §4 routing and §5 SLA deadlines, table-driven over the pure engine (no Kafka, no clock)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from router.domain.events import NamedAccount, Rep, SalesActivityType, SlaClass
from router.domain.routing import (
    apply_activity,
    current_out_of_office,
    decide_route,
    drain_queues,
    holder_problem,
    pool_members,
    route,
    skip_reason,
    sla_deadline,
    territory_pool,
)
from router.domain.routing_state import Decision, Holding, RouteRequest, RoutingState
from router.domain.rules import Rules, load_rules, parse_rules

RULES = load_rules()
OWNERS_CAPPED = parse_rules("routing:\n  named_account_ignores_capacity: false\n")
BANDS = parse_rules(
    """
routing:
  territories:
    - pool: EMEA-ENT
      countries: [DE, AT]
      employees_min: 1000
    - pool: EMEA-MM
      countries: [DE, AT]
      employees_max: 999
    - pool: SMB
      employees_max: 49
  fallback_pool: rest
"""
)
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday, inside default working hours
LATER = NOW + timedelta(days=7)
HI = SlaClass.HIGH_INTENT
BEH = SlaClass.BEHAVIOURAL


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def away(start: datetime = NOW - timedelta(days=1), end: datetime = LATER,
         backup: str | None = None) -> dict[str, Any]:
    """An out-of-office window (covering NOW by default)."""
    return {"start": start.isoformat(), "end": end.isoformat(), "backup_rep_id": backup}


def rep(rep_id: str, *, pools: Sequence[str] = ("global",), languages: Sequence[str] = (),
        active: bool = True, max_open: int = 30, weight: int = 1,
        ooo: Sequence[dict[str, Any]] = (), timezone: str = "UTC",
        hours: dict[str, tuple[str, str]] | None = None) -> Rep:
    data: dict[str, Any] = {
        "rep_id": rep_id, "pools": list(pools), "languages": list(languages), "active": active,
        "max_open_leads": max_open, "weight": weight, "out_of_office": list(ooo),
        "timezone": timezone,
    }
    if hours is not None:
        data["working_hours"] = hours
    return Rep.model_validate(data)


def roster(*reps: Rep) -> dict[str, Rep]:
    return {r.rep_id: r for r in reps}


def account(domain: str, owner: str) -> dict[str, NamedAccount]:
    return {domain: NamedAccount(account_domain=domain, owner_rep_id=owner)}


def request(lead: str, *, country: str | None = None, language: str | None = None,
            domains: Sequence[str] = (), employees: int | None = None, cycle: int = 1,
            sla: SlaClass = HI) -> RouteRequest:
    return RouteRequest(lead_id=lead, cycle=cycle, sla_class=sla, country=country,
                        language=language, employees=employees, account_domains=tuple(domains))


def fill(state: RoutingState, rep_id: str, n: int) -> None:
    """Give `rep_id` n open leads."""
    for i in range(n):
        lead = f"{rep_id}-open-{i}"
        state.hold(Holding(lead_id=lead, cycle=1, rep_id=rep_id, pool="x", rule="round_robin",
                           seq=1, sla_class=HI, started_at=0.0, due_at=0.0))


def until(end: datetime) -> str:
    return "until " + end.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def chosen(rep_id: str, rule: str, detail: str | None = None) -> dict[str, str]:
    entry = {"rep_id": rep_id, "chosen": rule}
    if detail is not None:
        entry["detail"] = detail
    return entry


def skipped(rep_id: str, reason: str, detail: str) -> dict[str, str]:
    return {"rep_id": rep_id, "skipped": reason, "detail": detail}


def assigned_reps(decisions: Iterable[Decision]) -> list[str | None]:
    return [d.rep_id for d in decisions]


# --------------------------------------------------------------------------------------------
# One routing decision: rule, pool and the whole trace
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    reps: list[Rep]
    request: RouteRequest
    rep_id: str | None
    rule: str | None
    pool: str
    trace: list[dict[str, str]]
    accounts: dict[str, NamedAccount] = field(default_factory=dict)
    open: dict[str, int] = field(default_factory=dict)
    rules: Rules = RULES


OWNER_BACK = NOW + timedelta(days=3)
BIGCO = account("bigco.com", "O")

DECISIONS = [
    pytest.param(Case(
        reps=[rep("A", pools=["NA"]), rep("O", pools=["EMEA"])],
        request=request("L", country="US", domains=["acme.io", "bigco.com"]), accounts=BIGCO,
        rep_id="O", rule="named_account", pool="EMEA",
        trace=[chosen("O", "named_account", "owner of bigco.com")],
    ), id="named-account-owner-reported-in-owners-pool"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"]), rep("O", pools=[])],
        request=request("L", country="US", domains=["bigco.com"]), accounts=BIGCO,
        rep_id="O", rule="named_account", pool="NA",
        trace=[chosen("O", "named_account", "owner of bigco.com")],
    ), id="named-account-owner-without-pools-reported-in-territory"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"]), rep("O", ooo=[away(end=OWNER_BACK, backup="B")]),
              rep("B", pools=["EMEA"])],
        request=request("L", country="US", domains=["bigco.com"]), accounts=BIGCO,
        rep_id="B", rule="named_account_backup", pool="EMEA",
        trace=[skipped("O", "out_of_office", until(OWNER_BACK)),
               chosen("B", "named_account_backup", "backup of O")],
    ), id="owner-ooo-backup-takes-it"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"]), rep("O", ooo=[away(end=OWNER_BACK)])],
        request=request("L", country="US", domains=["bigco.com"]), accounts=BIGCO,
        rep_id="A", rule="round_robin", pool="NA",
        trace=[skipped("O", "out_of_office", until(OWNER_BACK) + ", no backup"),
               chosen("A", "round_robin")],
    ), id="owner-ooo-no-backup-falls-to-pool"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"]), rep("O", ooo=[away(end=OWNER_BACK, backup="GONE")])],
        request=request("L", country="US", domains=["bigco.com"]), accounts=BIGCO,
        rep_id="A", rule="round_robin", pool="NA",
        trace=[skipped("O", "out_of_office", until(OWNER_BACK)),
               skipped("GONE", "not_on_roster", "backup of the owner"),
               chosen("A", "round_robin")],
    ), id="owner-ooo-backup-not-on-roster"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"]), rep("O", ooo=[away(end=OWNER_BACK, backup="B")]),
              rep("B", ooo=[away(end=LATER)])],
        request=request("L", country="US", domains=["bigco.com"]), accounts=BIGCO,
        rep_id="A", rule="round_robin", pool="NA",
        trace=[skipped("O", "out_of_office", until(OWNER_BACK)),
               skipped("B", "out_of_office", until(LATER)),
               chosen("A", "round_robin")],
    ), id="owner-ooo-backup-ooo-too"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"])],
        request=request("L", country="US", domains=["bigco.com"]), accounts=BIGCO,
        rep_id="A", rule="round_robin", pool="NA",
        trace=[skipped("O", "not_on_roster", "owner of bigco.com"), chosen("A", "round_robin")],
    ), id="owner-not-on-roster"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"]), rep("O", pools=["NA"], active=False)],
        request=request("L", country="US", domains=["bigco.com"]), accounts=BIGCO,
        rep_id="A", rule="round_robin", pool="NA",
        trace=[skipped("O", "inactive", "marked inactive"), chosen("A", "round_robin")],
    ), id="owner-inactive"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"]), rep("O", max_open=2)], open={"O": 2},
        request=request("L", country="US", domains=["bigco.com"]), accounts=BIGCO,
        rep_id="O", rule="named_account", pool="global",
        trace=[chosen("O", "named_account", "owner of bigco.com")],
    ), id="owner-at-capacity-still-gets-it-by-default"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"]), rep("O", max_open=2)], open={"O": 2},
        request=request("L", country="US", domains=["bigco.com"]), accounts=BIGCO,
        rules=OWNERS_CAPPED, rep_id="A", rule="round_robin", pool="NA",
        trace=[skipped("O", "at_capacity", "2/2 open"), chosen("A", "round_robin")],
    ), id="owner-at-capacity-blocked-when-configured"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"])],
        request=request("L", country="US", domains=["other.io"]), accounts=BIGCO,
        rep_id="A", rule="round_robin", pool="NA", trace=[chosen("A", "round_robin")],
    ), id="not-a-named-account"),
    # ---- pools ----
    pytest.param(Case(
        reps=[rep("E", pools=["EMEA"], active=False), rep("G")],
        request=request("L", country="DE"),
        rep_id="G", rule="fallback", pool="global",
        trace=[{"skipped": "pool_without_reps",
                "detail": "pool EMEA has no active reps; using global"},
               chosen("G", "fallback")],
    ), id="pool-without-active-reps-goes-to-fallback"),
    pytest.param(Case(
        reps=[rep("G")], request=request("L", country="JP"),
        rep_id="G", rule="fallback", pool="global",
        trace=[{"skipped": "pool_without_reps",
                "detail": "pool APAC has no active reps; using global"},
               chosen("G", "fallback")],
    ), id="pool-without-any-reps-goes-to-fallback"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"], active=False), rep("B", pools=["NA"])],
        request=request("L", country="US"),
        rep_id="B", rule="round_robin", pool="NA", trace=[chosen("B", "round_robin")],
    ), id="inactive-rep-is-never-a-candidate"),
    # ---- language ----
    pytest.param(Case(
        reps=[rep("A", pools=["EMEA"], languages=["en"]),
              rep("B", pools=["EMEA"], languages=["de"]),
              rep("C", pools=["EMEA"], languages=["de", "en"])],
        request=request("L", country="DE", language="de"),
        rep_id="B", rule="language_round_robin", pool="EMEA",
        trace=[chosen("B", "language_round_robin")],
    ), id="language-speakers-kept"),
    pytest.param(Case(
        reps=[rep("A", pools=["EMEA"], languages=["en"]),
              rep("B", pools=["EMEA"], languages=["de"])],
        request=request("L", country="DE", language="fr"),
        rep_id="A", rule="round_robin", pool="EMEA",
        trace=[{"skipped": "language_unmatched",
                "detail": "nobody in EMEA speaks fr; all reps kept"},
               chosen("A", "round_robin")],
    ), id="language-unmatched-keeps-all"),
    pytest.param(Case(
        reps=[rep("A", languages=["en"]), rep("B", languages=["es"])],
        request=request("L", language="es"),
        rep_id="B", rule="fallback", pool="global", trace=[chosen("B", "fallback")],
    ), id="language-in-fallback-pool-is-still-fallback"),
    pytest.param(Case(
        reps=[rep("A", pools=["EMEA"], languages=["en"]),
              rep("B", pools=["EMEA"], languages=["de"], active=False)],
        request=request("L", country="DE", language="de"),
        rep_id="A", rule="round_robin", pool="EMEA",
        trace=[{"skipped": "language_unmatched",
                "detail": "nobody in EMEA speaks de; all reps kept"},
               chosen("A", "round_robin")],
    ), id="inactive-speaker-does-not-count"),
    # ---- skips ----
    pytest.param(Case(
        reps=[rep("A", pools=["NA"], ooo=[away(end=NOW + timedelta(hours=2))]),
              rep("B", pools=["NA"])],
        request=request("L", country="US"),
        rep_id="B", rule="round_robin", pool="NA",
        trace=[skipped("A", "out_of_office", "until 2026-11-23T12:00Z"),
               chosen("B", "round_robin")],
    ), id="out-of-office-skipped-with-until"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"], ooo=[away(end=datetime.fromisoformat(
                  "2027-01-04T00:00:00+01:00"))]),
              rep("B", pools=["NA"])],
        request=request("L", country="US"),
        rep_id="B", rule="round_robin", pool="NA",
        trace=[skipped("A", "out_of_office", "until 2027-01-03T23:00Z"),
               chosen("B", "round_robin")],
    ), id="out-of-office-until-shown-in-utc"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"], ooo=[away(start=NOW + timedelta(hours=1))]),
              rep("B", pools=["NA"])],
        request=request("L", country="US"),
        rep_id="A", rule="round_robin", pool="NA", trace=[chosen("A", "round_robin")],
    ), id="future-out-of-office-not-yet-skipped"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"], max_open=2), rep("B", pools=["NA"])], open={"A": 2},
        request=request("L", country="US"),
        rep_id="B", rule="round_robin", pool="NA",
        trace=[skipped("A", "at_capacity", "2/2 open"), chosen("B", "round_robin")],
    ), id="at-capacity-skipped"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"], max_open=0), rep("B", pools=["NA"])],
        request=request("L", country="US"),
        rep_id="B", rule="round_robin", pool="NA",
        trace=[skipped("A", "at_capacity", "0/0 open"), chosen("B", "round_robin")],
    ), id="zero-capacity-never-chosen"),
    pytest.param(Case(
        reps=[rep("A", pools=["NA"], max_open=2), rep("B", pools=["NA"])], open={"A": 1},
        request=request("L", country="US"),
        rep_id="A", rule="round_robin", pool="NA", trace=[chosen("A", "round_robin")],
    ), id="below-capacity-chosen"),
    # ---- nobody ----
    pytest.param(Case(
        reps=[rep("A", pools=["NA"], max_open=1),
              rep("B", pools=["NA"], ooo=[away(end=NOW + timedelta(hours=1))])],
        open={"A": 1}, request=request("L", country="US"),
        rep_id=None, rule=None, pool="NA",
        trace=[skipped("A", "at_capacity", "1/1 open"),
               skipped("B", "out_of_office", "until 2026-11-23T11:00Z"),
               {"skipped": "nobody_eligible", "detail": "queued in NA"}],
    ), id="nobody-eligible-queued"),
    pytest.param(Case(
        reps=[], request=request("L", country="US"), rep_id=None, rule=None, pool="global",
        trace=[{"skipped": "pool_without_reps",
                "detail": "pool NA has no active reps; using global"},
               {"skipped": "nobody_eligible", "detail": "queued in global"}],
    ), id="empty-roster-queued-in-fallback"),
]


@pytest.mark.parametrize("case", DECISIONS)
def test_routing_decision(case: Case) -> None:
    state = RoutingState()
    for rep_id, n in case.open.items():
        fill(state, rep_id, n)
    decisions = route(case.request, roster(*case.reps), case.accounts, state, case.rules, NOW)
    assert len(decisions) == 1
    d = decisions[0]
    assert (d.rep_id, d.rule, d.pool) == (case.rep_id, case.rule, case.pool)
    assert d.trace == case.trace
    if case.rep_id is None:
        assert d.type == "lead.queued"
        assert [q.request.lead_id for q in state.queues[case.pool]] == ["L"]
        assert "L" not in state.holdings
    else:
        assert d.type == "lead.assigned"
        assert d.event_id == "L:c1:assign:1"
        held = state.holdings["L"]
        assert (held.rep_id, held.pool, held.rule, held.open) == (
            case.rep_id, case.pool, case.rule, True)
        assert "L" in state.open_by_rep[case.rep_id]
        assert not state.queues


def test_decide_route_changes_nothing() -> None:
    state = RoutingState()
    reps = roster(rep("A"), rep("B"))
    choice, pool, trace = decide_route(request("L"), reps, {}, state, RULES, NOW)
    assert choice is not None and choice.rep.rep_id == "A"
    assert (pool, trace) == ("global", [chosen("A", "fallback")])
    assert state == RoutingState()


# --------------------------------------------------------------------------------------------
# Territories
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("country", "pool"),
    [
        pytest.param("US", "NA", id="US"),
        pytest.param("CA", "NA", id="CA"),
        pytest.param("MX", "LATAM", id="MX"),
        pytest.param("BR", "LATAM", id="BR"),
        pytest.param("DE", "EMEA", id="DE"),
        pytest.param("NO", "EMEA", id="NO-not-false"),
        pytest.param("AE", "EMEA", id="AE"),
        pytest.param("ZA", "EMEA", id="ZA"),
        pytest.param("JP", "APAC", id="JP"),
        pytest.param("AU", "APAC", id="AU"),
        pytest.param("AQ", "global", id="unmapped"),
        pytest.param(None, "global", id="unknown"),
    ],
)
def test_default_territories(country: str | None, pool: str) -> None:
    assert territory_pool(request("L", country=country), RULES) == pool
    # and routing lands there when the pool has someone
    reps = roster(rep("P", pools=[pool]), rep("Z"))
    [d] = route(request("L", country=country), reps, {}, RoutingState(), RULES, NOW)
    expected_rule = "fallback" if pool == "global" else "round_robin"
    assert (d.pool, d.rep_id, d.rule) == (pool, "P", expected_rule)


@pytest.mark.parametrize(
    ("country", "employees", "pool"),
    [
        pytest.param("DE", 5000, "EMEA-ENT", id="DE-enterprise"),
        pytest.param("AT", 1000, "EMEA-ENT", id="AT-lower-bound-inclusive"),
        pytest.param("DE", 999, "EMEA-MM", id="DE-upper-bound-inclusive"),
        pytest.param("DE", 60, "EMEA-MM", id="DE-mid-market"),
        pytest.param("DE", 10, "EMEA-MM", id="first-match-wins"),
        pytest.param("DE", None, "rest", id="unknown-size-matches-no-band"),
        pytest.param("FR", 10, "SMB", id="any-country-band"),
        pytest.param(None, 49, "SMB", id="no-country-band"),
        pytest.param("FR", 500, "rest", id="no-match-custom-fallback"),
    ],
)
def test_territories_with_employee_bands(country: str | None, employees: int | None,
                                         pool: str) -> None:
    assert territory_pool(request("L", country=country, employees=employees), BANDS) == pool


def test_pool_members_active_sorted() -> None:
    reps = roster(rep("C", pools=["NA"]), rep("A", pools=["NA", "EMEA"]),
                  rep("B", pools=["NA"], active=False), rep("D", pools=["EMEA"]))
    assert [r.rep_id for r in pool_members("NA", reps)] == ["A", "C"]
    assert [r.rep_id for r in pool_members("EMEA", reps)] == ["A", "D"]
    assert pool_members("APAC", reps) == []


# --------------------------------------------------------------------------------------------
# Eligibility
# --------------------------------------------------------------------------------------------

WINDOW_START = NOW
WINDOW_END = NOW + timedelta(hours=4)


@pytest.mark.parametrize(
    ("at", "away_now"),
    [
        pytest.param(WINDOW_START - timedelta(seconds=1), False, id="before-start"),
        pytest.param(WINDOW_START, True, id="at-start"),
        pytest.param(WINDOW_END - timedelta(seconds=1), True, id="just-before-end"),
        pytest.param(WINDOW_END, False, id="at-end-back"),
    ],
)
def test_out_of_office_window_bounds(at: datetime, away_now: bool) -> None:
    r = rep("A", ooo=[away(start=WINDOW_START, end=WINDOW_END, backup="B")])
    window = current_out_of_office(r, at)
    assert (window is not None) == away_now
    if window is not None:
        assert window.backup_rep_id == "B"


@pytest.mark.parametrize(
    ("r", "open_leads", "check_capacity", "expected"),
    [
        pytest.param(rep("A"), 0, True, None, id="free"),
        pytest.param(rep("A", active=False, ooo=[away()]), 0, True,
                     ("inactive", "marked inactive"), id="inactive-first"),
        pytest.param(rep("A", ooo=[away(end=LATER)], max_open=0), 0, True,
                     ("out_of_office", until(LATER)), id="ooo-before-capacity"),
        pytest.param(rep("A", max_open=3), 3, True, ("at_capacity", "3/3 open"),
                     id="at-capacity"),
        pytest.param(rep("A", max_open=3), 3, False, None, id="capacity-not-checked"),
        pytest.param(rep("A", max_open=3), 2, True, None, id="one-slot-left"),
    ],
)
def test_skip_reason(r: Rep, open_leads: int, check_capacity: bool,
                     expected: tuple[str, str] | None) -> None:
    state = RoutingState()
    fill(state, r.rep_id, open_leads)
    assert skip_reason(r, state, NOW, check_capacity) == expected


# --------------------------------------------------------------------------------------------
# Weighted round-robin and cursors
# --------------------------------------------------------------------------------------------


def route_many(reps: dict[str, Rep], n: int, state: RoutingState | None = None,
               at: datetime = NOW, prefix: str = "L", **req: Any) -> list[str | None]:
    state = state if state is not None else RoutingState()
    out: list[str | None] = []
    for i in range(n):
        out += assigned_reps(route(request(f"{prefix}{i}", **req), reps, {}, state, RULES, at))
    return out


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        pytest.param({"C": 1, "A": 2, "B": 1}, "AABCAABC", id="2-1-1"),
        pytest.param({"B": 1, "A": 1, "C": 1}, "ABCABCAB", id="1-1-1"),
        pytest.param({"A": 3, "B": 1}, "AAABAAAB", id="3-1"),
        pytest.param({"A": 1, "B": 2}, "ABBABBAB", id="1-2"),
        pytest.param({"A": 2, "B": 2}, "AABBAABB", id="2-2"),
        pytest.param({"A": 5}, "AAAAAAAA", id="alone"),
    ],
)
def test_weighted_round_robin_order(weights: dict[str, int], expected: str) -> None:
    # the roster is given out of order on purpose: candidates are sorted by rep_id
    reps = roster(*(rep(r, weight=w) for r, w in weights.items()))
    assert "".join(str(r) for r in route_many(reps, len(expected))) == expected


def test_weighted_turns_skip_a_rep_at_capacity() -> None:
    state = RoutingState()
    reps = roster(rep("A", weight=2, max_open=1), rep("B"), rep("C"))
    # A is full after its first lead: its second turn passes to the next rep
    assert route_many(reps, 4, state) == ["A", "B", "C", "B"]


def test_cursor_moves_only_on_assignment() -> None:
    """A rep back from vacation rejoins the rotation; it is not flooded with catch-up leads."""
    back = NOW + timedelta(hours=1)
    reps = roster(rep("A"), rep("B", ooo=[away(start=NOW - timedelta(days=1), end=back)]),
                  rep("C"))
    state = RoutingState()
    while_away = route_many(reps, 6, state, at=NOW, prefix="early")
    assert while_away == ["A", "C", "A", "C", "A", "C"]
    after = route_many(reps, 6, state, at=back, prefix="late")
    assert after == ["A", "B", "C", "A", "B", "C"]


def test_queued_lead_does_not_move_the_cursor() -> None:
    state = RoutingState()
    reps = roster(rep("A", max_open=1), rep("B", max_open=1))
    assert route_many(reps, 3, state) == ["A", "B", None]
    assert state.cursors == {"global|*": ("B", 1)}


def test_cursor_per_pool() -> None:
    state = RoutingState()
    reps = roster(rep("A", pools=["NA"]), rep("B", pools=["NA"]), rep("C", pools=["EMEA"]),
                  rep("D", pools=["EMEA"]))
    got = []
    for i, country in enumerate(["US", "DE", "US", "DE", "US"]):
        got += assigned_reps(route(request(f"L{i}", country=country), reps, {}, state, RULES,
                                   NOW))
    assert got == ["A", "C", "B", "D", "A"]
    assert state.cursors == {"NA|*": ("A", 1), "EMEA|*": ("D", 1)}


def test_cursor_per_language_group() -> None:
    state = RoutingState()
    reps = roster(rep("A", pools=["EMEA"], languages=["de", "en"]),
                  rep("B", pools=["EMEA"], languages=["de"]),
                  rep("C", pools=["EMEA"], languages=["en"]))
    got = []
    for i, lang in enumerate(["de", "en", "de", "en", None, None]):
        got += assigned_reps(route(request(f"L{i}", country="DE", language=lang), reps, {},
                                   state, RULES, NOW))
    assert got == ["A", "A", "B", "C", "A", "B"]
    assert state.cursors == {"EMEA|de": ("B", 1), "EMEA|en": ("C", 1), "EMEA|*": ("B", 1)}


def test_named_account_does_not_move_the_cursor() -> None:
    state = RoutingState()
    reps = roster(rep("A"), rep("B"))
    got = []
    for i, domains in enumerate([[], ["bigco.com"], ["bigco.com"], []]):
        got += assigned_reps(route(request(f"L{i}", domains=domains), reps,
                                   account("bigco.com", "B"), state, RULES, NOW))
    assert got == ["A", "B", "B", "B"]
    assert state.cursors == {"global|*": ("B", 1)}
    assert state.open_count("B") == 3


def test_removed_rep_keeps_its_place_in_the_rotation() -> None:
    state = RoutingState()
    assert route_many(roster(rep("A"), rep("B"), rep("C")), 2, state) == ["A", "B"]
    # B leaves the roster: the rotation continues after B's place, with C
    assert route_many(roster(rep("A"), rep("C")), 2, state, prefix="M") == ["C", "A"]


# --------------------------------------------------------------------------------------------
# Queueing and draining
# --------------------------------------------------------------------------------------------


def test_queued_when_nobody_is_eligible() -> None:
    state = RoutingState()
    reps = roster(rep("A", max_open=1))
    route(request("L0"), reps, {}, state, RULES, NOW)
    [d] = route(request("L1", sla=BEH), reps, {}, state, RULES, NOW)
    assert (d.type, d.event_id, d.rep_id, d.rule, d.pool) == (
        "lead.queued", "L1:c1:queued", None, None, "global")
    assert d.trace[-1] == {"skipped": "nobody_eligible", "detail": "queued in global"}
    # the clock runs from queueing, in the default hours (UTC 09-17) as no rep is known yet
    assert d.started_at == NOW.timestamp()
    assert d.due_at == (NOW + timedelta(hours=1)).timestamp()
    [q] = state.queues["global"]
    assert (q.request.lead_id, q.pool, q.queued_at) == ("L1", "global", NOW.timestamp())
    assert state.is_queued("L1", 1)
    assert "queue:global" in state.dirty


def test_drain_in_arrival_order_when_capacity_frees() -> None:
    state = RoutingState()
    reps = roster(rep("A", max_open=1))
    assert route_many(reps, 4, state) == ["A", None, None, None]
    assert drain_queues(reps, {}, state, RULES, NOW) == []  # nobody freed yet
    t1 = NOW + timedelta(minutes=3)
    assert apply_activity(state, "L0", "A", SalesActivityType.ACCEPTED, t1) is not None
    [d] = drain_queues(reps, {}, state, RULES, t1)
    assert (d.type, d.lead_id, d.rep_id, d.event_id) == (
        "lead.assigned", "L1", "A", "L1:c1:assign:1")
    assert d.trace == [chosen("A", "fallback"), {"detail": "from the queue of global"}]
    assert [q.request.lead_id for q in state.queues["global"]] == ["L2", "L3"]
    apply_activity(state, "L1", "A", SalesActivityType.REJECTED, t1)
    assert assigned_reps(drain_queues(reps, {}, state, RULES, t1)) == ["A"]
    assert state.holdings["L2"].rep_id == "A"
    assert [q.request.lead_id for q in state.queues["global"]] == ["L3"]


def test_drain_when_a_rep_returns() -> None:
    back = NOW + timedelta(hours=2)
    reps = roster(rep("A", ooo=[away(end=back)]))
    state = RoutingState()
    assert route_many(reps, 2, state) == [None, None]
    assert drain_queues(reps, {}, state, RULES, back - timedelta(seconds=1)) == []
    out = drain_queues(reps, {}, state, RULES, back)
    assert [(d.lead_id, d.rep_id) for d in out] == [("L0", "A"), ("L1", "A")]
    assert state.queues == {}
    assert "queue:global" in state.dirty
    assert state.flush()["queue:global"] is None  # the emptied queue is deleted from storage


def test_queued_lead_nobody_can_take_does_not_block_another_language() -> None:
    state = RoutingState()
    reps = roster(rep("A", pools=["EMEA"], languages=["de"], max_open=1),
                  rep("B", pools=["EMEA"], languages=["en"], max_open=1))
    route(request("Lde0", country="DE", language="de"), reps, {}, state, RULES, NOW)
    route(request("Len0", country="DE", language="en"), reps, {}, state, RULES, NOW)
    route(request("Lde1", country="DE", language="de"), reps, {}, state, RULES, NOW)
    route(request("Len1", country="DE", language="en"), reps, {}, state, RULES, NOW)
    assert [q.request.lead_id for q in state.queues["EMEA"]] == ["Lde1", "Len1"]
    apply_activity(state, "Len0", "B", SalesActivityType.CONVERTED, NOW)
    [d] = drain_queues(reps, {}, state, RULES, NOW)
    assert (d.lead_id, d.rep_id, d.rule) == ("Len1", "B", "language_round_robin")
    assert [q.request.lead_id for q in state.queues["EMEA"]] == ["Lde1"]


def test_drain_batch_limit_keeps_the_rest_in_order() -> None:
    rules = parse_rules("routing:\n  queue_drain_batch: 2\n")
    back = NOW + timedelta(hours=1)
    reps = roster(rep("A", ooo=[away(end=back)]))
    state = RoutingState()
    for i in range(5):
        route(request(f"L{i}"), reps, {}, state, rules, NOW)
    assert [d.lead_id for d in drain_queues(reps, {}, state, rules, back)] == ["L0", "L1"]
    assert [q.request.lead_id for q in state.queues["global"]] == ["L2", "L3", "L4"]
    assert [d.lead_id for d in drain_queues(reps, {}, state, rules, back)] == ["L2", "L3"]


def test_queued_lead_goes_to_its_pool_once_the_pool_has_reps() -> None:
    state = RoutingState()
    [d] = route(request("L", country="DE"), {}, {}, state, RULES, NOW)
    assert (d.type, d.pool) == ("lead.queued", "global")
    [d] = drain_queues(roster(rep("E", pools=["EMEA"])), {}, state, RULES, NOW)
    assert (d.rep_id, d.pool, d.rule) == ("E", "EMEA", "round_robin")
    assert state.holdings["L"].pool == "EMEA"


def test_queued_named_account_lead_goes_to_the_returning_owner() -> None:
    back = NOW + timedelta(hours=1)
    reps = roster(rep("O", ooo=[away(end=back)]))
    state = RoutingState()
    [d] = route(request("L", domains=["bigco.com"]), reps, BIGCO, state, RULES, NOW)
    assert d.type == "lead.queued"
    [d] = drain_queues(reps, BIGCO, state, RULES, back)
    assert (d.rep_id, d.rule) == ("O", "named_account")


# --------------------------------------------------------------------------------------------
# SLA deadlines on assignments
# --------------------------------------------------------------------------------------------

FRIDAY_1630_BERLIN = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("sla", "r", "at", "due"),
    [
        pytest.param(HI, rep("A"), NOW, NOW + timedelta(minutes=5), id="high-intent-5-min"),
        pytest.param(HI, rep("A", timezone="Europe/Berlin"), FRIDAY_1630_BERLIN,
                     FRIDAY_1630_BERLIN + timedelta(minutes=5),
                     id="high-intent-ignores-business-hours"),
        pytest.param(BEH, rep("A"), NOW, NOW + timedelta(hours=1), id="behavioural-in-hours"),
        pytest.param(BEH, rep("A", timezone="Europe/Berlin"), FRIDAY_1630_BERLIN,
                     datetime(2026, 11, 23, 8, 30, tzinfo=UTC), id="behavioural-berlin-friday"),
        pytest.param(BEH, rep("A", timezone="America/New_York"), FRIDAY_1630_BERLIN,
                     FRIDAY_1630_BERLIN + timedelta(hours=1), id="behavioural-new-york-morning"),
        pytest.param(BEH, rep("A", hours={"sat": ("10:00", "14:00")}),
                     datetime(2026, 11, 20, 12, 0, tzinfo=UTC),
                     datetime(2026, 11, 21, 11, 0, tzinfo=UTC), id="behavioural-saturday-rep"),
    ],
)
def test_sla_due_on_assignment(sla: SlaClass, r: Rep, at: datetime, due: datetime) -> None:
    state = RoutingState()
    [d] = route(request("L", sla=sla), roster(r), {}, state, RULES, at)
    assert d.type == "lead.assigned"
    assert (d.started_at, d.due_at) == (at.timestamp(), due.timestamp())
    held = state.holdings["L"]
    assert (held.sla_class, held.started_at, held.due_at) == (sla, at.timestamp(),
                                                               due.timestamp())
    assert sla_deadline(sla, at, r, RULES) == due


@pytest.mark.parametrize(
    ("hours", "needle"),
    [
        pytest.param({}, "at least one working day", id="no-working-day"),
        pytest.param({"mon": ("17:00", "09:00")}, "start 17:00 is not before end 09:00",
                     id="inverted-window"),
        pytest.param({"mon": ("09:00", "24:30")}, "String should match pattern",
                     id="past-midnight"),
    ],
)
def test_a_rep_without_usable_working_hours_is_refused(hours: dict[str, Any], needle: str
                                                       ) -> None:
    """Such a rep could never get a behavioural deadline: refuse it at the door instead."""
    with pytest.raises(ValidationError, match=needle):
        Rep.model_validate({"rep_id": "A", "working_hours": hours})


def test_sla_budgets_are_configurable() -> None:
    rules = parse_rules("sla:\n  high_intent_minutes: 2\n  behavioural_business_hours: 3\n")
    assert sla_deadline(HI, NOW, rep("A"), rules) == NOW + timedelta(minutes=2)
    assert sla_deadline(BEH, NOW, rep("A"), rules) == NOW + timedelta(hours=3)
    # no rep (queued): the default hours of the rules
    assert sla_deadline(BEH, datetime(2026, 11, 23, 16, 0, tzinfo=UTC), None, rules) == (
        datetime(2026, 11, 24, 11, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    ("sla", "due"),
    [
        pytest.param(HI, NOW + timedelta(minutes=5), id="high-intent"),
        pytest.param(BEH, datetime(2026, 11, 23, 10, 0, tzinfo=UTC) + timedelta(hours=1),
                     id="behavioural"),
    ],
)
def test_sla_of_a_lead_from_the_queue_runs_from_queueing(sla: SlaClass, due: datetime) -> None:
    state = RoutingState()
    reps = roster(rep("A", max_open=1))
    route(request("L0"), reps, {}, state, RULES, NOW)
    [queued] = route(request("L1", sla=sla), reps, {}, state, RULES, NOW)
    later = NOW + timedelta(minutes=40)
    apply_activity(state, "L0", "A", SalesActivityType.RELEASED, later)
    [d] = drain_queues(reps, {}, state, RULES, later)
    assert d.lead_id == "L1"
    assert (d.started_at, d.due_at) == (NOW.timestamp(), due.timestamp())
    assert queued.due_at == due.timestamp()
    held = state.holdings["L1"]
    assert (held.started_at, held.due_at) == (NOW.timestamp(), due.timestamp())


def test_sla_from_queue_uses_the_assigned_reps_hours() -> None:
    # queued Friday 15:30 UTC (default UTC hours: due 16:30 UTC); assigned to a Berlin rep
    # whose day ended at 17:00 Berlin (16:00 UTC): 30 minutes Friday, 30 minutes Monday
    state = RoutingState()
    back = FRIDAY_1630_BERLIN + timedelta(minutes=10)
    reps = roster(rep("A", timezone="Europe/Berlin",
                      ooo=[away(start=FRIDAY_1630_BERLIN - timedelta(hours=1), end=back)]))
    [queued] = route(request("L", sla=BEH), reps, {}, state, RULES, FRIDAY_1630_BERLIN)
    assert queued.due_at == (FRIDAY_1630_BERLIN + timedelta(hours=1)).timestamp()
    [d] = drain_queues(reps, {}, state, RULES, back)
    assert d.due_at == datetime(2026, 11, 23, 8, 30, tzinfo=UTC).timestamp()


# --------------------------------------------------------------------------------------------
# Repeats
# --------------------------------------------------------------------------------------------


def test_duplicate_route_request_changes_nothing() -> None:
    state = RoutingState()
    reps = roster(rep("A"), rep("B"))
    [first] = route(request("L"), reps, {}, state, RULES, NOW)
    state.flush()
    snapshot = copy.deepcopy(state)
    assert route(request("L"), reps, {}, state, RULES, NOW + timedelta(minutes=1)) == []
    assert route(request("L", sla=BEH), reps, {}, state, RULES, NOW) == []
    assert state == snapshot
    assert state.dirty == set()
    assert state.holdings["L"].rep_id == first.rep_id == "A"


def test_duplicate_of_a_queued_request_is_not_queued_twice() -> None:
    state = RoutingState()
    assert route(request("L"), {}, {}, state, RULES, NOW)[0].type == "lead.queued"
    assert route(request("L"), {}, {}, state, RULES, NOW) == []
    assert len(state.queues["global"]) == 1


def test_older_cycle_is_ignored_and_a_new_cycle_is_routed() -> None:
    state = RoutingState()
    reps = roster(rep("A"), rep("B"))
    route(request("L", cycle=2), reps, {}, state, RULES, NOW)
    assert route(request("L", cycle=1), reps, {}, state, RULES, NOW) == []
    apply_activity(state, "L", "A", SalesActivityType.REJECTED, NOW)
    [d] = route(request("L", cycle=3), reps, {}, state, RULES, NOW)
    assert (d.event_id, d.rep_id) == ("L:c3:assign:1", "B")
    held = state.holdings["L"]
    assert (held.cycle, held.open, held.ended_by) == (3, True, None)


# --------------------------------------------------------------------------------------------
# Holders and sales activity
# --------------------------------------------------------------------------------------------


def held_state(*activity: SalesActivityType) -> RoutingState:
    state = RoutingState()
    route(request("L1"), roster(rep("A")), {}, state, RULES, NOW)
    for kind in activity:
        apply_activity(state, "L1", "A", kind, NOW)
    return state


@pytest.mark.parametrize(
    ("activity", "lead", "rep_id", "problem"),
    [
        pytest.param((), "L1", "A", None, id="holder"),
        pytest.param((SalesActivityType.ACCEPTED,), "L1", "A", None,
                     id="accepted-still-holds"),
        pytest.param((), "L1", "B", "field 'rep_id': B does not hold lead L1 (it is held by A)",
                     id="wrong-rep"),
        pytest.param((), "L9", "A", "field 'rep_id': lead L9 is not assigned to anyone",
                     id="unassigned"),
        pytest.param((SalesActivityType.REJECTED,), "L1", "A",
                     "field 'rep_id': A no longer holds lead L1 (rejected)", id="ended-rejected"),
        pytest.param((SalesActivityType.ACCEPTED, SalesActivityType.CONVERTED), "L1", "A",
                     "field 'rep_id': A no longer holds lead L1 (converted)",
                     id="ended-converted"),
    ],
)
def test_holder_problem(activity: tuple[SalesActivityType, ...], lead: str, rep_id: str,
                        problem: str | None) -> None:
    assert holder_problem(held_state(*activity), lead, rep_id) == problem


def test_holder_problem_for_a_queued_lead() -> None:
    state = RoutingState()
    route(request("L"), {}, {}, state, RULES, NOW)
    assert holder_problem(state, "L", "A") == "field 'rep_id': lead L is not assigned to anyone"


@pytest.mark.parametrize(
    ("kind", "frees", "ends"),
    [
        pytest.param(SalesActivityType.FIRST_TOUCH, False, False, id="first_touch"),
        pytest.param(SalesActivityType.ACCEPTED, True, False, id="accepted"),
        pytest.param(SalesActivityType.REJECTED, True, True, id="rejected"),
        pytest.param(SalesActivityType.DISQUALIFIED, True, True, id="disqualified"),
        pytest.param(SalesActivityType.CONVERTED, True, True, id="converted"),
        pytest.param(SalesActivityType.RELEASED, True, True, id="released"),
    ],
)
def test_apply_activity(kind: SalesActivityType, frees: bool, ends: bool) -> None:
    state = held_state()
    state.flush()
    assert state.open_count("A") == 1
    freed = apply_activity(state, "L1", "A", kind, NOW + timedelta(minutes=2))
    assert (freed is not None) == frees
    held = state.holdings["L1"]  # the holding is kept either way
    assert freed is None or freed is held
    assert held.open is not frees
    assert state.open_count("A") == (0 if frees else 1)
    assert held.ended_by == (kind.value if ends else None)
    assert (holder_problem(state, "L1", "A") is not None) == ends
    if frees:
        assert state.dirty == {"lead:L1"}
    # a second closing activity frees nothing twice
    again = apply_activity(state, "L1", "A", SalesActivityType.RELEASED, NOW)
    assert again is None if frees else again is held
    assert state.open_count("A") == 0


def test_first_touch_records_the_first_time_only() -> None:
    state = held_state()
    state.flush()
    t1, t2 = NOW + timedelta(minutes=3), NOW + timedelta(minutes=9)
    assert apply_activity(state, "L1", "A", SalesActivityType.FIRST_TOUCH, t1) is None
    assert state.holdings["L1"].first_touch_at == t1.timestamp()
    assert state.dirty == {"lead:L1"}
    state.flush()
    apply_activity(state, "L1", "A", SalesActivityType.FIRST_TOUCH, t2)
    assert state.holdings["L1"].first_touch_at == t1.timestamp()
    assert state.dirty == set()
    assert state.open_count("A") == 1


def test_accepted_frees_capacity_for_round_robin() -> None:
    state = RoutingState()
    reps = roster(rep("A", max_open=1))
    assert route_many(reps, 1, state) == ["A"]
    apply_activity(state, "L0", "A", SalesActivityType.ACCEPTED, NOW)
    assert route_many(reps, 1, state, prefix="M") == ["A"]
    assert state.open_by_rep == {"A": {"M0"}}


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


def rich_state() -> RoutingState:
    state = RoutingState()
    reps = roster(rep("A", pools=["EMEA"], languages=["de"], max_open=2, weight=2),
                  rep("B", pools=["EMEA"], languages=["en"], max_open=1),
                  rep("C", max_open=1))
    for i, (country, lang) in enumerate([("DE", "de"), ("DE", "en"), ("DE", "de"),
                                         ("DE", "en"), ("DE", "de"), (None, None),
                                         (None, "fr"), ("US", None)]):
        route(RouteRequest(f"L{i}", 1, BEH if i % 2 else HI, country=country, language=lang,
                           employees=100 + i, account_domains=("x.io",), sql_event_id=f"L{i}:sql",
                           received_at=1000.5 + i),
              reps, {}, state, RULES, NOW + timedelta(minutes=i))
    apply_activity(state, "L0", "A", SalesActivityType.ACCEPTED, NOW)
    apply_activity(state, "L1", "B", SalesActivityType.FIRST_TOUCH, NOW + timedelta(minutes=1))
    apply_activity(state, "L2", "A", SalesActivityType.REJECTED, NOW)
    return state


def test_flush_load_round_trip() -> None:
    state = rich_state()
    assert state.queues and state.cursors and state.open_by_rep  # something of each
    assert any(not h.open for h in state.holdings.values())
    records = {k: v for k, v in state.flush().items() if v is not None}
    assert state.dirty == set() and state.flush() == {}
    loaded = RoutingState.load(records)
    assert loaded.holdings == state.holdings
    assert loaded.cursors == state.cursors
    assert loaded.queues == state.queues
    assert loaded.open_by_rep == state.open_by_rep
    assert loaded.dirty == set()
    # and it keeps deciding the same way
    reps = roster(rep("A", pools=["EMEA"], languages=["de"], max_open=5, weight=2),
                  rep("B", pools=["EMEA"], languages=["en"], max_open=5), rep("C"))
    later = NOW + timedelta(hours=1)
    assert drain_queues(reps, {}, loaded, RULES, later) == drain_queues(reps, {}, state, RULES,
                                                                        later)
    assert loaded.holdings == state.holdings and loaded.cursors == state.cursors


def test_flush_deletes_and_load_applies_only_what_is_stored() -> None:
    state = RoutingState()
    reps = roster(rep("A", max_open=1))
    route_many(reps, 2, state)
    store: dict[str, bytes] = {}

    def persist() -> None:
        for key, value in state.flush().items():
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value

    persist()
    assert set(store) == {"lead:L0", "cursor:global|*", "queue:global"}
    apply_activity(state, "L0", "A", SalesActivityType.ACCEPTED, NOW)
    drain_queues(reps, {}, state, RULES, NOW)
    persist()
    assert set(store) == {"lead:L0", "lead:L1", "cursor:global|*"}
    loaded = RoutingState.load(store)
    assert loaded.open_by_rep == {"A": {"L1"}}
    assert loaded.holdings == state.holdings and loaded.queues == {}
