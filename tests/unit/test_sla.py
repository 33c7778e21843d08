"""Speed-to-lead SLA (SPEC §5) over the pure clock functions and through the routing stage.

Clocks: warning at `warning_fraction` of the budget, breach at the deadline, each once per
assignment; a breach may reassign (high_intent by default) to the next eligible rep who has not
breached this lead in this cycle, or leave the lead with its holder and say so. Queued leads have
clocks too. The flags survive a flush/load of the routing state, so a restart never fires twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.adapters.topics import Topics
from router.domain.events import (
    Assignment,
    NamedAccount,
    Rep,
    SalesActivityType,
    SlaClass,
    SlaEvent,
)
from router.domain.routing import apply_activity, drain_queues, holder_problem, route, sla_deadline
from router.domain.routing_state import Decision, RouteRequest, RoutingState
from router.domain.rules import Rules, load_rules, parse_rules
from router.domain.sla import SlaOutcome, check_clocks, first_touch
from router.records import Record
from router.service.leads_stage import forward_activity
from router.service.routing_stage import OFFSET_KEY, RoutingStage, tick

RULES = load_rules()
TOPICS = Topics.with_prefix("")
VERSION = "test-sla"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # Monday 10:00 UTC, inside default hours
NO_ACCOUNTS: Mapping[str, NamedAccount] = {}
HIGH = SlaClass.HIGH_INTENT
BEHAVIOURAL = SlaClass.BEHAVIOURAL
# budget of each class from T0 for a rep on the default hours (Mon-Fri 09-17 UTC)
BUDGET = {HIGH: timedelta(minutes=5), BEHAVIOURAL: timedelta(hours=1)}


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def rep(rep_id: str, **fields: Any) -> Rep:
    return Rep.model_validate({"rep_id": rep_id, "pools": ["global"], **fields})


def roster(*reps: Rep) -> dict[str, Rep]:
    return {r.rep_id: r for r in reps}


def request(lead: str, sla: SlaClass = HIGH, cycle: int = 1, **fields: Any) -> RouteRequest:
    return RouteRequest(lead_id=lead, cycle=cycle, sla_class=sla, **fields)


def mins(m: float) -> datetime:
    return T0 + timedelta(minutes=m)


def rules_with(yaml_text: str) -> Rules:
    return parse_rules(yaml_text, "test-sla-rules.yaml")


def derived_timed(state: RoutingState) -> set[str]:
    return {lead for lead, h in state.holdings.items() if h.clock_running}


def derived_open(state: RoutingState) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for lead, h in state.holdings.items():
        if h.open:
            out.setdefault(h.rep_id, set()).add(lead)
    return out


def assert_indexes(state: RoutingState) -> None:
    assert state.timed == derived_timed(state)
    assert state.open_by_rep == derived_open(state)


def clocks(state: RoutingState, reps: Mapping[str, Rep], now: datetime,
           rules: Rules = RULES) -> tuple[list[SlaOutcome], list[Decision]]:
    outcomes, decisions = check_clocks(state, reps, NO_ACCOUNTS, rules, now)
    assert_indexes(state)
    return outcomes, decisions


def ids(outcomes: Sequence[SlaOutcome]) -> list[str]:
    return [o.event_id for o in outcomes]


def assigned(reps: Mapping[str, Rep], *requests: RouteRequest, at: datetime = T0,
             rules: Rules = RULES) -> RoutingState:
    state = RoutingState()
    for r in requests:
        route(r, reps, NO_ACCOUNTS, state, rules, at)
    assert_indexes(state)
    return state


def reload(state: RoutingState, store: dict[str, bytes]) -> RoutingState:
    """Flush what changed into `store` and build a fresh state from it (a restart)."""
    for key, value in state.flush().items():
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value
    return RoutingState.load(store)


# --------------------------------------------------------------------------------------------
# check_clocks: warning and breach, each once
# --------------------------------------------------------------------------------------------

W, B = "L1:c1:sla:1:warning", "L1:c1:sla:1:breached"

# (id, tick times as fractions of the budget, event ids expected from each tick)
CLOCK_CASES: list[tuple[str, list[float], list[list[str]]]] = [
    ("before the warning", [0.0, 0.5, 0.79], [[], [], []]),
    ("at the warning", [0.8], [[W]]),
    ("warning fires once", [0.8, 0.85, 0.99], [[W], [], []]),
    ("warning then the deadline", [0.8, 1.0], [[W], [B]]),
    ("just before the deadline", [0.999], [[W]]),
    ("straight to the deadline: warning and breach together", [1.0], [[W, B]]),
    ("long after", [50.0], [[W, B]]),
    ("each fires once, whatever comes later", [0.8, 0.8, 1.0, 1.0, 3.0, 500.0],
     [[W], [], [B], [], [], []]),
]


@pytest.mark.parametrize("sla", [HIGH, BEHAVIOURAL])
@pytest.mark.parametrize(
    ("fractions", "expected"),
    [pytest.param(f, e, id=name) for name, f, e in CLOCK_CASES],
)
def test_check_clocks_table(sla: SlaClass, fractions: list[float],
                            expected: list[list[str]]) -> None:
    reps = roster(rep("A"))  # nobody else: a high_intent breach keeps the lead with A
    state = assigned(reps, request("L1", sla))
    h = state.holdings["L1"]
    assert h.started_at == T0.timestamp()
    assert h.due_at == (T0 + BUDGET[sla]).timestamp()
    assert h.warn_at == (T0 + BUDGET[sla] * 0.8).timestamp()
    for fraction, want in zip(fractions, expected, strict=True):
        outcomes, decisions = clocks(state, reps, T0 + BUDGET[sla] * fraction)
        assert ids(outcomes) == want
        assert decisions == []
        for o in outcomes:
            assert (o.lead_id, o.cycle, o.seq, o.rep_id, o.pool, o.sla_class) == (
                "L1", 1, 1, "A", "global", sla)
            assert (o.started_at, o.due_at) == (h.started_at, h.due_at)
            # the event happened at the moment it was due, not when the tick noticed it
            expected_at = h.warn_at if o.type == "sla.warning" else h.due_at
            assert o.occurred_at == expected_at
            assert o.response_seconds is None
    assert state.holdings["L1"].rep_id == "A"


def test_clock_outcome_details() -> None:
    reps = roster(rep("A"), rep("B"))
    state = assigned(reps, request("L1", BEHAVIOURAL))
    [warning, breach], _ = clocks(state, reps, mins(60))
    assert (warning.event_id, breach.event_id) == ("L1:c1:sla:1:warning", "L1:c1:sla:1:breached")
    assert warning.detail is None
    assert breach.detail == "no first touch by A; reassignment is off for behavioural"
    assert breach.reassigned_to is None


def test_warning_fraction_is_configurable() -> None:
    rules = rules_with("sla: {warning_fraction: 0.5, high_intent_minutes: 10}\n")
    reps = roster(rep("A"))
    state = assigned(reps, request("L1"), rules=rules)
    assert clocks(state, reps, mins(4.99), rules)[0] == []
    assert ids(clocks(state, reps, mins(5), rules)[0]) == ["L1:c1:sla:1:warning"]
    assert clocks(state, reps, mins(9.99), rules)[0] == []
    assert ids(clocks(state, reps, mins(10), rules)[0]) == ["L1:c1:sla:1:breached"]


def test_behavioural_clock_counts_business_hours_only() -> None:
    friday_1630 = datetime(2026, 11, 27, 16, 30, tzinfo=UTC)
    reps = roster(rep("A"))
    state = assigned(reps, request("L1", BEHAVIOURAL), at=friday_1630)
    h = state.holdings["L1"]
    # 30 working minutes on Friday, 30 on Monday from 09:00; the warning at 48 of them
    assert h.due_at == datetime(2026, 11, 30, 9, 30, tzinfo=UTC).timestamp()
    assert h.warn_at == datetime(2026, 11, 30, 9, 18, tzinfo=UTC).timestamp()
    saturday = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert clocks(state, reps, saturday)[0] == []
    assert ids(clocks(state, reps, datetime(2026, 11, 30, 9, 18, tzinfo=UTC))[0]) == [
        "L1:c1:sla:1:warning"]


def test_sla_deadline_helper() -> None:
    a = rep("A", timezone="Europe/Berlin")
    assert sla_deadline(HIGH, T0, a, RULES) == mins(5)
    assert sla_deadline(HIGH, T0, None, RULES, 0.8) == mins(4)
    # 10:00 UTC is 11:00 in Berlin: one business hour later is 12:00 Berlin, 11:00 UTC
    assert sla_deadline(BEHAVIOURAL, T0, a, RULES) == mins(60)
    evening = datetime(2026, 11, 23, 16, 30, tzinfo=UTC)  # 17:30 Berlin: after hours
    assert sla_deadline(BEHAVIOURAL, evening, a, RULES) == datetime(
        2026, 11, 24, 9, 0, tzinfo=UTC)  # Tuesday 10:00 Berlin
    # a queued lead (no rep yet) counts in the rules' default hours (UTC 09-17)
    assert sla_deadline(BEHAVIOURAL, evening, None, RULES) == datetime(
        2026, 11, 24, 9, 30, tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# Breach and reassignment
# --------------------------------------------------------------------------------------------


def test_high_intent_breach_reassigns_to_the_next_rep() -> None:
    reps = roster(rep("A"), rep("B"), rep("C"))
    state = assigned(reps, request("L1"))
    assert state.holdings["L1"].rep_id == "A"
    assert (state.open_count("A"), state.open_count("B")) == (1, 0)
    [warning, breach], [d] = clocks(state, reps, mins(5))
    assert warning.event_id == "L1:c1:sla:1:warning"
    assert (breach.event_id, breach.rep_id, breach.reassigned_to) == (
        "L1:c1:sla:1:breached", "A", "B")
    assert breach.detail == "no first touch by A; reassigned to B"
    assert (d.type, d.event_id, d.seq, d.rep_id, d.rule, d.pool) == (
        "lead.reassigned", "L1:c1:assign:2", 2, "B", "reassign_after_breach", "global")
    assert (d.started_at, d.due_at) == (mins(5).timestamp(), mins(10).timestamp())
    assert d.trace == [{"rep_id": "A", "skipped": "sla_breached",
                        "detail": "no first touch by the deadline (assignment 1)"},
                       {"rep_id": "A", "skipped": "excluded",
                        "detail": "breached this lead's SLA"},
                       {"rep_id": "B", "chosen": "fallback"}]
    # the breacher's slot is freed, the new rep's taken
    assert (state.open_count("A"), state.open_count("B")) == (0, 1)
    h = state.holdings["L1"]
    assert (h.rep_id, h.seq, h.cycle, h.breached_by, h.warned, h.breached, h.open) == (
        "B", 2, 1, ("A",), False, False, True)
    assert (h.started_at, h.warn_at, h.due_at) == (
        mins(5).timestamp(), mins(9).timestamp(), mins(10).timestamp())
    assert state.timed == {"L1"}
    Assignment.model_validate({  # the decision makes a valid Assignment (rule allowed)
        "event_id": d.event_id, "type": d.type, "lead_id": d.lead_id, "cycle": d.cycle,
        "rep_id": d.rep_id, "pool": d.pool, "rule": d.rule, "trace": d.trace,
        "sla": {"class": d.sla_class, "due_at": mins(10)}, "router_version": VERSION,
        "rules_version": RULES.version, "emitted_at": mins(5)})


def test_repeated_breaches_go_round_robin_and_exclude_every_breacher() -> None:
    reps = roster(rep("A"), rep("B"), rep("C"))
    state = assigned(reps, request("L1"))  # A; cursor at A
    route(request("L2"), reps, NO_ACCOUNTS, state, RULES, mins(1))  # B; cursor at B
    assert first_touch(state, state.holdings["L2"], mins(1.5)) is not None
    assert_indexes(state)
    # 1st breach (A): the next after the cursor is C
    outcomes, [d1] = clocks(state, reps, mins(5))
    assert ids(outcomes) == ["L1:c1:sla:1:warning", "L1:c1:sla:1:breached"]
    assert (d1.rep_id, d1.seq) == ("C", 2)
    # the new clock warns and breaches again, with seq 2 ids; A and C are both excluded
    assert clocks(state, reps, mins(8.9)) == ([], [])
    assert ids(clocks(state, reps, mins(9))[0]) == ["L1:c1:sla:2:warning"]
    [b2], [d2] = clocks(state, reps, mins(10))
    assert (b2.event_id, b2.rep_id, b2.reassigned_to) == ("L1:c1:sla:2:breached", "C", "B")
    assert (d2.event_id, d2.rep_id, d2.seq) == ("L1:c1:assign:3", "B", 3)
    # every earlier breacher is out before round-robin starts; B is next after the cursor
    assert d2.trace[1:] == [
        {"rep_id": "A", "skipped": "excluded", "detail": "breached this lead's SLA"},
        {"rep_id": "C", "skipped": "excluded", "detail": "breached this lead's SLA"},
        {"rep_id": "B", "chosen": "fallback"},
    ]
    assert state.holdings["L1"].breached_by == ("A", "C")
    assert (state.open_count("A"), state.open_count("B"), state.open_count("C")) == (0, 2, 0)
    # 3rd breach (B): everybody has breached this lead, so it stays with B and says so
    [w3, b3], none = clocks(state, reps, mins(15))
    assert (w3.event_id, b3.event_id) == ("L1:c1:sla:3:warning", "L1:c1:sla:3:breached")
    assert none == []
    assert b3.detail == "nobody else is eligible; the lead stays with B"
    assert (b3.rep_id, b3.reassigned_to) == ("B", None)
    h = state.holdings["L1"]
    assert (h.rep_id, h.seq, h.open, h.breached) == ("B", 3, True, True)
    assert state.timed == set()
    assert clocks(state, reps, mins(600)) == ([], [])


def test_behavioural_breach_does_not_reassign_by_default() -> None:
    reps = roster(rep("A"), rep("B"))
    state = assigned(reps, request("L1", BEHAVIOURAL))
    [_, breach], decisions = clocks(state, reps, mins(60))
    assert decisions == []
    assert (breach.type, breach.rep_id, breach.reassigned_to) == ("sla.breached", "A", None)
    assert "reassignment is off for behavioural" in (breach.detail or "")
    assert state.holdings["L1"].rep_id == "A"
    assert (state.open_count("A"), state.open_count("B")) == (1, 0)
    assert state.timed == set()


@pytest.mark.parametrize(
    ("sla", "reassigns"), [(HIGH, False), (BEHAVIOURAL, True)],
)
def test_reassign_on_breach_follows_the_rules(sla: SlaClass, reassigns: bool) -> None:
    rules = rules_with("sla:\n  reassign_on_breach: {high_intent: false, behavioural: true}\n")
    reps = roster(rep("A"), rep("B"))
    state = assigned(reps, request("L1", sla), rules=rules)
    [_, breach], decisions = clocks(state, reps, T0 + BUDGET[sla], rules)
    assert breach.reassigned_to == ("B" if reassigns else None)
    assert [(d.type, d.rep_id) for d in decisions] == (
        [("lead.reassigned", "B")] if reassigns else [])
    assert state.holdings["L1"].rep_id == ("B" if reassigns else "A")


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(rep("B", max_open_leads=0), id="at-capacity"),
        pytest.param(rep("B", active=False), id="inactive"),
        pytest.param(rep("B", out_of_office=[{"start": "2026-11-01T00:00:00Z",
                                              "end": "2026-12-01T00:00:00Z"}]),
                     id="out-of-office"),
        pytest.param(rep("B", pools=["EMEA"]), id="other-pool"),
    ],
)
def test_nobody_else_eligible_keeps_the_lead_with_its_holder(other: Rep) -> None:
    reps = roster(rep("A"), other)
    state = assigned(reps, request("L1"))
    [_, breach], decisions = clocks(state, reps, mins(5))
    assert decisions == []
    assert breach.detail == "nobody else is eligible; the lead stays with A"
    assert (breach.rep_id, breach.reassigned_to) == ("A", None)
    h = state.holdings["L1"]
    assert (h.rep_id, h.seq, h.open, h.breached) == ("A", 1, True, True)
    assert state.open_count("A") == 1
    assert clocks(state, reps, mins(30)) == ([], [])  # the clock stopped: no second breach


def test_reassignment_respects_capacity_and_skips_busy_reps() -> None:
    reps = roster(rep("A"), rep("B", max_open_leads=0), rep("C"))
    state = assigned(reps, request("L1"))
    _, [d] = clocks(state, reps, mins(5))
    assert d.rep_id == "C"
    assert d.trace[1:] == [{"rep_id": "A", "skipped": "excluded",
                            "detail": "breached this lead's SLA"},
                           {"rep_id": "B", "skipped": "at_capacity", "detail": "0/0 open"},
                           {"rep_id": "C", "chosen": "fallback"}]


def test_a_breached_lead_goes_to_a_non_speaker_when_the_only_speaker_breached() -> None:
    """The breacher is out before the language filter: nobody else speaks French, so every
    remaining rep is a candidate (trace says so) rather than nobody."""
    reps = roster(rep("A", languages=["fr"]), rep("B", languages=["en"]))
    state = assigned(reps, request("L1", language="fr"))
    assert state.holdings["L1"].rep_id == "A"
    _, [d] = clocks(state, reps, mins(5))
    assert d.rep_id == "B"
    assert {"skipped": "language_unmatched",
            "detail": "nobody in global speaks fr; all reps kept"} in d.trace


def test_breach_of_a_named_account_owner_goes_to_the_pool() -> None:
    accounts = {"bigco.com": NamedAccount(account_domain="bigco.com", owner_rep_id="O")}
    reps = roster(rep("A"), rep("O", pools=["EMEA"]))
    state = RoutingState()
    route(request("L1", account_domains=("bigco.com",)), reps, accounts, state, RULES, T0)
    assert state.holdings["L1"].rule == "named_account"
    outcomes, [d] = check_clocks(state, reps, accounts, RULES, mins(5))
    assert outcomes[-1].reassigned_to == "A"
    assert {"rep_id": "O", "skipped": "excluded",
            "detail": "owner of bigco.com, breached this lead"} in d.trace
    assert (state.open_count("O"), state.open_count("A")) == (0, 1)
    assert_indexes(state)


def test_clocks_of_many_leads_fire_in_lead_order_at_their_own_times() -> None:
    reps = roster(rep("A"))
    state = assigned(reps, request("L2"), request("L1"))
    route(request("L3"), reps, NO_ACCOUNTS, state, RULES, mins(2))
    assert ids(clocks(state, reps, mins(4))[0]) == ["L1:c1:sla:1:warning",
                                                   "L2:c1:sla:1:warning"]
    assert ids(clocks(state, reps, mins(6))[0]) == [
        "L1:c1:sla:1:breached", "L2:c1:sla:1:breached", "L3:c1:sla:1:warning"]
    assert ids(clocks(state, reps, mins(7))[0]) == ["L3:c1:sla:1:breached"]


# --------------------------------------------------------------------------------------------
# Queued leads
# --------------------------------------------------------------------------------------------


def test_queued_lead_warns_and_breaches_with_seq_0() -> None:
    full = roster(rep("A", max_open_leads=0))
    state = RoutingState()
    [queued] = route(request("L1"), full, NO_ACCOUNTS, state, RULES, T0)
    assert queued.type == "lead.queued"
    assert clocks(state, full, mins(3.9)) == ([], [])
    [w], _ = clocks(state, full, mins(4))
    assert (w.event_id, w.type, w.seq, w.rep_id, w.pool) == (
        "L1:c1:sla:0:warning", "sla.warning", 0, None, "global")
    assert (w.started_at, w.due_at, w.occurred_at) == (
        T0.timestamp(), mins(5).timestamp(), mins(4).timestamp())
    assert w.detail == "still queued in global"
    assert "queue:global" in state.dirty
    state.flush()
    assert clocks(state, full, mins(4.5)) == ([], [])
    assert state.dirty == set()  # nothing changed, nothing to write
    [b], _ = clocks(state, full, mins(5))
    assert (b.event_id, b.rep_id, b.occurred_at) == (
        "L1:c1:sla:0:breached", None, mins(5).timestamp())
    assert b.detail == "still queued in global: nobody eligible"
    assert clocks(state, full, mins(90)) == ([], [])
    assert state.queues["global"][0].breached


def test_a_lead_assigned_from_the_queue_after_its_queue_clock_breached_does_not_breach_again(
) -> None:
    full = roster(rep("A", max_open_leads=0), rep("B", max_open_leads=0))
    state = RoutingState()
    route(request("L1"), full, NO_ACCOUNTS, state, RULES, T0)
    assert ids(clocks(state, full, mins(6))[0]) == ["L1:c1:sla:0:warning",
                                                   "L1:c1:sla:0:breached"]
    room = roster(rep("A", max_open_leads=5), rep("B", max_open_leads=0))
    [d] = drain_queues(room, NO_ACCOUNTS, state, RULES, mins(7))
    assert (d.type, d.rep_id, d.seq, d.started_at) == ("lead.assigned", "A", 1, T0.timestamp())
    assert_indexes(state)
    h = state.holdings["L1"]
    assert (h.warned, h.breached) == (True, True)
    assert state.timed == set()
    assert clocks(state, room, mins(60)) == ([], [])
    assert first_touch(state, h, mins(61)) is None  # the breach was published already
    assert state.holdings["L1"].rep_id == "A"  # and was not reassigned


def test_a_lead_assigned_from_the_queue_after_a_warning_only_breaches() -> None:
    full = roster(rep("A", max_open_leads=0))
    state = RoutingState()
    route(request("L1"), full, NO_ACCOUNTS, state, RULES, T0)
    assert ids(clocks(state, full, mins(4.2))[0]) == ["L1:c1:sla:0:warning"]
    room = roster(rep("A"))
    [d] = drain_queues(room, NO_ACCOUNTS, state, RULES, mins(4.5))
    assert d.due_at == mins(5).timestamp()  # the clock started at queueing
    assert state.timed == {"L1"}
    [b], _ = clocks(state, room, mins(5))  # no second warning for the same clock
    assert (b.event_id, b.rep_id) == ("L1:c1:sla:1:breached", "A")


def test_a_lead_assigned_from_the_queue_in_time_can_meet_its_sla() -> None:
    full = roster(rep("A", max_open_leads=0))
    state = RoutingState()
    route(request("L1"), full, NO_ACCOUNTS, state, RULES, T0)
    room = roster(rep("A"))
    drain_queues(room, NO_ACCOUNTS, state, RULES, mins(1))
    met = first_touch(state, state.holdings["L1"], mins(3))
    assert met is not None
    assert (met.event_id, met.response_seconds) == ("L1:c1:sla:1:met", 180.0)
    assert clocks(state, room, mins(30)) == ([], [])


# --------------------------------------------------------------------------------------------
# first_touch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sla", "touch_after", "kind", "response", "detail"),
    [
        pytest.param(HIGH, timedelta(seconds=90), "sla.met", 90.0, None, id="high-in-time"),
        pytest.param(HIGH, timedelta(minutes=5), "sla.met", 300.0, None, id="high-at-deadline"),
        pytest.param(HIGH, timedelta(minutes=5, seconds=1), "sla.breached", 301.0,
                     "first touch came 1 s late", id="high-one-second-late"),
        pytest.param(HIGH, timedelta(minutes=7), "sla.breached", 420.0,
                     "first touch came 120 s late", id="high-late"),
        pytest.param(BEHAVIOURAL, timedelta(minutes=59), "sla.met", 3540.0, None,
                     id="behavioural-in-time"),
        pytest.param(BEHAVIOURAL, timedelta(minutes=61), "sla.breached", 3660.0,
                     "first touch came 60 s late", id="behavioural-late"),
        pytest.param(HIGH, -timedelta(seconds=30), "sla.met", 0.0, None,
                     id="touch-dated-before-assignment"),
    ],
)
def test_first_touch(sla: SlaClass, touch_after: timedelta, kind: str, response: float,
                     detail: str | None) -> None:
    reps = roster(rep("A"), rep("B"))
    state = assigned(reps, request("L1", sla))
    h = state.holdings["L1"]
    state.flush()
    o = first_touch(state, h, T0 + touch_after)
    assert o is not None
    suffix = "met" if kind == "sla.met" else "breached"
    assert (o.type, o.event_id, o.rep_id, o.seq) == (kind, f"L1:c1:sla:1:{suffix}", "A", 1)
    assert o.response_seconds == response
    assert o.detail == detail
    assert o.reassigned_to is None  # a late touch is still a touch: the lead stays
    assert o.occurred_at == (h.due_at if kind == "sla.breached" else
                             (T0 + touch_after).timestamp())
    assert h.first_touch_at == (T0 + touch_after).timestamp()
    assert state.timed == set() and "lead:L1" in state.dirty
    assert_indexes(state)
    # a repeat counts for nothing, and the stopped clock never fires
    assert first_touch(state, h, T0 + touch_after + timedelta(seconds=5)) is None
    assert h.first_touch_at == (T0 + touch_after).timestamp()
    assert clocks(state, reps, T0 + timedelta(days=3)) == ([], [])
    assert state.holdings["L1"].rep_id == "A"


def test_first_touch_after_a_published_breach_emits_nothing() -> None:
    reps = roster(rep("A"))
    state = assigned(reps, request("L1"))
    assert ids(clocks(state, reps, mins(5))[0])[-1] == "L1:c1:sla:1:breached"
    h = state.holdings["L1"]
    assert first_touch(state, h, mins(6)) is None
    assert h.first_touch_at == mins(6).timestamp()  # still recorded
    assert_indexes(state)


def test_first_touch_after_the_warning_is_met() -> None:
    reps = roster(rep("A"))
    state = assigned(reps, request("L1"))
    clocks(state, reps, mins(4))
    o = first_touch(state, state.holdings["L1"], mins(4.5))
    assert o is not None and (o.type, o.response_seconds) == ("sla.met", 270.0)
    assert clocks(state, reps, mins(5)) == ([], [])


def test_first_touch_by_the_new_holder_after_a_reassignment() -> None:
    reps = roster(rep("A"), rep("B"))
    state = assigned(reps, request("L1"))
    clocks(state, reps, mins(5))
    assert holder_problem(state, "L1", "A") is not None  # A no longer holds it
    assert holder_problem(state, "L1", "B") is None
    o = first_touch(state, state.holdings["L1"], mins(6))
    assert o is not None
    assert (o.event_id, o.rep_id, o.response_seconds) == ("L1:c1:sla:2:met", "B", 60.0)


def test_closing_activity_and_the_clock() -> None:
    reps = roster(rep("A"))
    state = assigned(reps, request("L1"), request("L2"), request("L3"))
    apply_activity(state, "L1", "A", SalesActivityType.REJECTED, mins(1))
    apply_activity(state, "L2", "A", SalesActivityType.CONVERTED, mins(1))
    assert_indexes(state)
    assert state.timed == {"L3"}  # an ended holding has no clock
    assert ids(clocks(state, reps, mins(5))[0]) == ["L3:c1:sla:1:warning",
                                                   "L3:c1:sla:1:breached"]


# --------------------------------------------------------------------------------------------
# Durability: flags survive flush/load, so a restart never fires twice
# --------------------------------------------------------------------------------------------


def test_sla_flags_survive_a_restart() -> None:
    reps = roster(rep("A"), rep("B"), rep("C"))
    store: dict[str, bytes] = {}
    state = assigned(reps, request("L1"), request("L2"))  # A, B
    assert ids(clocks(state, reps, mins(4))[0]) == ["L1:c1:sla:1:warning",
                                                   "L2:c1:sla:1:warning"]
    state = reload(state, store)
    assert_indexes(state)
    assert state.holdings["L1"].warned and state.holdings["L2"].warned
    assert clocks(state, reps, mins(4.5)) == ([], [])  # no second warning after the restart
    first_touch(state, state.holdings["L2"], mins(4.6))
    state = reload(state, store)
    assert state.timed == {"L1"}
    outcomes, [d] = clocks(state, reps, mins(5))
    assert ids(outcomes) == ["L1:c1:sla:1:breached"]
    assert d.rep_id == "C"  # the cursor (at B) came back from storage too
    state = reload(state, store)
    h = state.holdings["L1"]
    assert (h.rep_id, h.seq, h.breached_by, h.warned, h.breached) == ("C", 2, ("A",), False,
                                                                        False)
    assert (state.open_count("A"), state.open_count("B"), state.open_count("C")) == (0, 1, 1)
    assert clocks(state, reps, mins(5.5)) == ([], [])  # L1:c1:sla:1 is not fired again
    outcomes, [d] = clocks(state, reps, mins(10))
    assert ids(outcomes) == ["L1:c1:sla:2:warning", "L1:c1:sla:2:breached"]
    assert d.rep_id == "B"  # A is still excluded after the restart
    state = reload(state, store)
    assert state.holdings["L1"].breached_by == ("A", "C")


def test_a_stored_breach_is_not_fired_again() -> None:
    reps = roster(rep("A"))
    store: dict[str, bytes] = {}
    state = assigned(reps, request("L1"))
    clocks(state, reps, mins(5))
    writes = state.flush()
    assert orjson.loads(writes["lead:L1"] or b"null")["breached"] is True
    store.update({k: v for k, v in writes.items() if v is not None})
    restarted = RoutingState.load(store)
    assert restarted.timed == set()
    assert clocks(restarted, reps, mins(10)) == ([], [])
    assert first_touch(restarted, restarted.holdings["L1"], mins(11)) is None


def test_queue_clock_flags_survive_a_restart() -> None:
    full = roster(rep("A", max_open_leads=0))
    store: dict[str, bytes] = {}
    state = RoutingState()
    route(request("L1"), full, NO_ACCOUNTS, state, RULES, T0)
    clocks(state, full, mins(4))
    state = reload(state, store)
    assert state.queues["global"][0].warned
    assert ids(clocks(state, full, mins(5))[0]) == ["L1:c1:sla:0:breached"]
    state = reload(state, store)
    assert clocks(state, full, mins(50)) == ([], [])


def test_flush_and_load_round_trip_the_live_state() -> None:
    reps = roster(rep("A"), rep("B", max_open_leads=1))
    store: dict[str, bytes] = {}
    state = assigned(reps, request("L1"), request("L2"), request("L3", BEHAVIOURAL))
    clocks(state, reps, mins(4))
    first_touch(state, state.holdings["L2"], mins(4.2))
    clocks(state, reps, mins(5))
    loaded = reload(state, store)
    assert loaded.holdings == state.holdings
    assert loaded.queues == state.queues
    assert loaded.cursors == state.cursors
    assert (loaded.timed, loaded.open_by_rep) == (state.timed, state.open_by_rep)


# --------------------------------------------------------------------------------------------
# Property: random route / first_touch / activity / tick / restart sequences
# --------------------------------------------------------------------------------------------

LEADS = ("L0", "L1", "L2", "L3", "L4")


@dataclass
class World:
    reps: dict[str, Rep]
    rules: Rules
    state: RoutingState = field(default_factory=RoutingState)
    store: dict[str, bytes] = field(default_factory=dict)
    now: datetime = T0
    seen: Counter[str] = field(default_factory=Counter)
    met: set[tuple[str, int]] = field(default_factory=set)
    breached: set[tuple[str, int, int]] = field(default_factory=set)
    per_clock: Counter[tuple[str, int, int, str]] = field(default_factory=Counter)

    def emit(self, outcomes: Sequence[SlaOutcome], decisions: Sequence[Decision],
             from_tick: bool) -> None:
        for o in outcomes:
            self.seen[o.event_id] += 1
            assert self.seen[o.event_id] == 1, f"{o.event_id} emitted twice"
            kind = o.type.removeprefix("sla.")
            assert o.event_id == f"{o.lead_id}:c{o.cycle}:sla:{o.seq}:{kind}"
            # at most one warning and one breach (and one met) per clock
            self.per_clock[(o.lead_id, o.cycle, o.seq, kind)] += 1
            assert self.per_clock[(o.lead_id, o.cycle, o.seq, kind)] == 1
            assert not (kind == "met" and o.seq == 0)  # only a holder can touch a lead
            assert o.type in {"sla.warning", "sla.breached", "sla.met"}
            if from_tick:
                assert o.type != "sla.met"
                assert o.occurred_at <= self.now.timestamp()  # never fires early
            if o.type == "sla.met":
                assert (o.lead_id, o.cycle, o.seq) not in self.breached
                self.met.add((o.lead_id, o.cycle))
            elif o.type == "sla.breached":
                assert (o.lead_id, o.cycle) not in self.met, "a met lead breached"
                self.breached.add((o.lead_id, o.cycle, o.seq))
        for d in decisions:
            self.seen[d.event_id] += 1
            assert self.seen[d.event_id] == 1, f"{d.event_id} emitted twice"
            if d.type == "lead.reassigned":
                h = self.state.holdings[d.lead_id]
                assert d.rep_id == h.rep_id and d.rep_id not in h.breached_by
                assert d.rule == "reassign_after_breach"


steps = st.lists(
    st.tuples(
        st.sampled_from(["route", "route", "touch", "tick", "tick", "tick", "close", "restart"]),
        st.sampled_from(LEADS),
        st.sampled_from([HIGH, HIGH, BEHAVIOURAL]),
        st.sampled_from([SalesActivityType.ACCEPTED, SalesActivityType.REJECTED,
                         SalesActivityType.RELEASED]),
        st.integers(0, 240),  # seconds the clock moves before the step
    ),
    min_size=10,
    max_size=40,
)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    n = draw(st.integers(1, 4))
    reps = roster(*(rep(f"R{i}", max_open_leads=draw(st.integers(1, 3))) for i in range(n)))
    behavioural_too = draw(st.booleans())
    rules = rules_with("sla: {reassign_on_breach: {high_intent: true, behavioural: true}}\n"
                       ) if behavioural_too else RULES
    return World(reps, rules)


@settings(max_examples=150, deadline=None)
@given(world=worlds(), script=steps)
def test_clock_properties_over_random_sequences(world: World, script: list[Any]) -> None:
    for action, lead, sla, closing, advance in script:
        world.now += timedelta(seconds=advance)
        state = world.state
        if action == "route":
            held = state.holdings.get(lead)
            cycle = held.cycle + (held.ended_by is not None) if held else 1
            decisions = route(request(lead, sla, cycle), world.reps, NO_ACCOUNTS, state,
                              world.rules, world.now)
            world.emit([], decisions, False)
        elif action == "touch":
            h = state.holdings.get(lead)
            if h is not None and holder_problem(state, lead, h.rep_id) is None:
                o = first_touch(state, h, world.now)
                world.emit([o] if o else [], [], False)
        elif action == "close":
            h = state.holdings.get(lead)
            if (h is not None and holder_problem(state, lead, h.rep_id) is None
                    and apply_activity(state, lead, h.rep_id, closing, world.now) is not None):
                world.emit([], drain_queues(world.reps, NO_ACCOUNTS, state, world.rules,
                                            world.now), False)
        elif action == "tick":
            outcomes, decisions = check_clocks(state, world.reps, NO_ACCOUNTS, world.rules,
                                               world.now)
            decisions += drain_queues(world.reps, NO_ACCOUNTS, state, world.rules, world.now)
            world.emit(outcomes, decisions, True)
            ts = world.now.timestamp()
            # everything due has fired: no running clock is overdue, no queued one unflagged
            for lead_id in state.timed:
                h = state.holdings[lead_id]
                assert h.due_at > ts and (h.warned or h.warn_at > ts)
            for queue in state.queues.values():
                for q in queue:
                    assert q.breached or q.due_at > ts
                    assert q.warned or q.warn_at > ts
        else:  # a restart: everything written so far, nothing else
            loaded = reload(state, world.store)
            assert loaded.holdings == state.holdings
            assert loaded.queues == state.queues
            world.state = loaded
        # flushed after every step, as the routing stage does with each batch
        for key, value in world.state.flush().items():
            if value is None:
                world.store.pop(key, None)
            else:
                world.store[key] = value
        assert_indexes(world.state)
        for rep_id, r in world.reps.items():
            assert world.state.open_count(rep_id) <= r.max_open_leads
        for h in world.state.holdings.values():
            assert h.rep_id not in h.breached_by


# --------------------------------------------------------------------------------------------
# Through the routing stage: records in, SlaEvent JSON and recycle records out
# --------------------------------------------------------------------------------------------


def route_record(offset: int, lead: str, sla: SlaClass = HIGH) -> Record:
    return Record(TOPICS.routing, 0, offset, lead.encode(),
                  orjson.dumps({"kind": "route", **request(lead, sla).to_json()}))


def activity_record(offset: int, lead: str, rep_id: str, kind: str, *, at: datetime = T0,
                    reason: str | None = None, event_id: str = "sa-1") -> Record:
    data: dict[str, Any] = {"event_id": event_id, "lead_id": lead, "rep_id": rep_id,
                            "type": kind, "occurred_at": at.isoformat()}
    if reason is not None:
        data["reason"] = reason
    source = Record(TOPICS.activity, 2, 100 + offset, lead.encode(), orjson.dumps(data))
    out = forward_activity(source, RULES, TOPICS, at, VERSION)
    assert out.topic == TOPICS.routing, orjson.loads(out.value)
    return Record(TOPICS.routing, 0, offset, out.key, out.value)


def tick_record(offset: int, at: datetime) -> Record:
    return Record(TOPICS.routing, 0, offset, b"tick", tick(at))


def new_stage(*reps: Rep) -> RoutingStage:
    return RoutingStage(RULES, TOPICS, VERSION, roster(*reps), {})


@dataclass
class Run:
    sla: list[dict[str, Any]]
    assignments: list[dict[str, Any]]
    recycle: list[dict[str, Any]]
    other: list[tuple[str, dict[str, Any]]]
    writes: dict[bytes, bytes | None]


def run(s: RoutingStage, records: Sequence[Record], now: datetime) -> Run:
    result = s.process(records, now, dict)
    out = Run([], [], [], [], dict(result.writes))
    for o in result.outputs:
        body = orjson.loads(o.value)
        if o.topic == TOPICS.sla:
            SlaEvent.model_validate(body)
            assert o.key == body["lead_id"].encode()
            out.sla.append(body)
        elif o.topic == TOPICS.assignments:
            Assignment.model_validate(body)
            out.assignments.append(body)
        elif o.topic == TOPICS.recycle:
            assert o.key == body["lead_id"].encode()
            out.recycle.append(body)
        else:
            out.other.append((o.topic, body))
    return out


def test_stage_tick_emits_sla_events_and_the_reassignment() -> None:
    s = new_stage(rep("A"), rep("B"))
    first = run(s, [route_record(0, "L1")], T0)
    assert [a["rep_id"] for a in first.assignments] == ["A"]
    warn = run(s, [tick_record(1, mins(4))], mins(4))
    assert warn.assignments == [] and warn.other == []
    assert warn.sla == [{
        "event_id": "L1:c1:sla:1:warning", "type": "sla.warning", "lead_id": "L1", "cycle": 1,
        "rep_id": "A", "pool": "global", "sla_class": "high_intent",
        "started_at": "2026-11-23T10:00:00.000Z", "due_at": "2026-11-23T10:05:00.000Z",
        "occurred_at": "2026-11-23T10:04:00.000Z", "response_seconds": None, "detail": None,
        "reassigned_to": None, "router_version": VERSION, "rules_version": RULES.version,
        "emitted_at": "2026-11-23T10:04:00.000Z",
    }]
    assert orjson.loads(warn.writes[b"lead:L1"] or b"null")["warned"] is True
    assert warn.writes[OFFSET_KEY.encode()] == b"1"
    later = mins(5) + timedelta(seconds=3)
    breach = run(s, [tick_record(2, later)], later)
    [b] = breach.sla
    assert (b["event_id"], b["type"], b["rep_id"], b["reassigned_to"]) == (
        "L1:c1:sla:1:breached", "sla.breached", "A", "B")
    assert b["occurred_at"] == "2026-11-23T10:05:00.000Z"  # the deadline itself
    assert b["emitted_at"] == "2026-11-23T10:05:03.000Z"
    [a] = breach.assignments
    assert (a["event_id"], a["type"], a["rep_id"], a["rule"]) == (
        "L1:c1:assign:2", "lead.reassigned", "B", "reassign_after_breach")
    assert a["sla"] == {"class": "high_intent", "due_at": "2026-11-23T10:10:03.000Z"}
    held = orjson.loads(breach.writes[b"lead:L1"] or b"null")
    assert (held["rep_id"], held["seq"], held["breached_by"]) == ("B", 2, ["A"])
    assert s.state is not None
    assert (s.state.open_count("A"), s.state.open_count("B")) == (0, 1)
    # the same tick again: nothing new
    again = run(s, [tick_record(3, later)], later)
    assert (again.sla, again.assignments) == ([], [])
    # the breacher's activity is refused now; the new holder's first touch is met
    refused = run(s, [activity_record(4, "L1", "A", "first_touch", at=mins(6))], mins(6))
    assert [t for t, _ in refused.other] == [TOPICS.deadletter]
    assert refused.sla == []
    met = run(s, [activity_record(5, "L1", "B", "first_touch", at=mins(6),
                                  event_id="sa-2")], mins(6))
    assert [(e["event_id"], e["type"], e["rep_id"]) for e in met.sla] == [
        ("L1:c1:sla:2:met", "sla.met", "B")]


def test_stage_restart_does_not_fire_a_clock_twice() -> None:
    store: dict[bytes, bytes] = {}

    def keep(writes: Mapping[bytes, bytes | None]) -> None:
        for key, value in writes.items():
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value

    s = new_stage(rep("A"))
    keep(run(s, [route_record(0, "L1")], T0).writes)
    warned = run(s, [tick_record(1, mins(4))], mins(4))
    assert [e["event_id"] for e in warned.sla] == ["L1:c1:sla:1:warning"]
    keep(warned.writes)
    restarted = new_stage(rep("A"))
    result = restarted.process([tick_record(2, mins(4.5))], mins(4.5), lambda: dict(store))
    assert [o for o in result.outputs if o.topic == TOPICS.sla] == []
    keep(dict(result.writes))
    result = restarted.process([tick_record(3, mins(5))], mins(5), lambda: dict(store))
    assert [orjson.loads(o.value)["event_id"] for o in result.outputs] == [
        "L1:c1:sla:1:breached"]


def test_stage_queued_lead_clock_through_ticks() -> None:
    s = new_stage(rep("A", max_open_leads=1))
    run(s, [route_record(0, "L1"), route_record(1, "L2")], T0)
    r = run(s, [tick_record(2, mins(5))], mins(5))
    assert [(e["event_id"], e["rep_id"]) for e in r.sla] == [
        ("L1:c1:sla:1:warning", "A"), ("L1:c1:sla:1:breached", "A"),
        ("L2:c1:sla:0:warning", None), ("L2:c1:sla:0:breached", None)]
    assert r.sla[-1]["detail"] == "still queued in global: nobody eligible"
    assert r.assignments == []  # nobody else for L1, and A is full


def test_stage_breach_frees_the_breachers_slot_for_the_queue_in_the_same_tick() -> None:
    s = new_stage(rep("A", max_open_leads=1),
                  rep("B", max_open_leads=1, out_of_office=[{
                      "start": "2026-11-01T00:00:00Z", "end": mins(5).isoformat()}]))
    run(s, [route_record(0, "L1")], T0)  # A, now full
    queued = run(s, [route_record(1, "L2")], mins(1))  # A full, B away
    assert [a["type"] for a in queued.assignments] == ["lead.queued"]
    r = run(s, [tick_record(2, mins(5))], mins(5))  # B is back; L1 breaches
    assert [(e["event_id"], e["reassigned_to"]) for e in r.sla] == [
        ("L1:c1:sla:1:warning", None), ("L1:c1:sla:1:breached", "B"),
        ("L2:c1:sla:0:warning", None)]
    assert [(a["event_id"], a["type"], a["rep_id"]) for a in r.assignments] == [
        ("L1:c1:assign:2", "lead.reassigned", "B"), ("L2:c1:assign:1", "lead.assigned", "A")]
    assert s.state is not None and s.state.open_by_rep == {"A": {"L2"}, "B": {"L1"}}
    # L2 already warned in the queue: only its breach is left, at its queue deadline
    assert [e["event_id"] for e in run(s, [tick_record(3, mins(6))], mins(6)).sla] == [
        "L2:c1:sla:1:breached"]


def test_stage_first_touch_emits_sla_met() -> None:
    s = new_stage(rep("A"))
    run(s, [route_record(0, "L1")], T0)
    touched = T0 + timedelta(seconds=90)
    r = run(s, [activity_record(1, "L1", "A", "first_touch", at=touched)], mins(2))
    [met] = r.sla
    assert (met["event_id"], met["type"], met["response_seconds"], met["rep_id"]) == (
        "L1:c1:sla:1:met", "sla.met", 90.0, "A")
    assert met["occurred_at"] == "2026-11-23T10:01:30.000Z"
    assert (r.assignments, r.recycle, r.other) == ([], [], [])
    assert orjson.loads(r.writes[b"lead:L1"] or b"null")["first_touch_at"] == touched.timestamp()
    repeat = run(s, [activity_record(2, "L1", "A", "first_touch", at=mins(3),
                                     event_id="sa-2")], mins(3))
    assert repeat.sla == [] and repeat.other == []
    assert run(s, [tick_record(3, mins(10))], mins(10)).sla == []


def test_stage_late_first_touch_emits_a_breach() -> None:
    s = new_stage(rep("A"), rep("B"))
    run(s, [route_record(0, "L1")], T0)
    r = run(s, [activity_record(1, "L1", "A", "first_touch", at=mins(6))], mins(6))
    [late] = r.sla
    assert (late["event_id"], late["type"], late["response_seconds"]) == (
        "L1:c1:sla:1:breached", "sla.breached", 360.0)
    assert late["reassigned_to"] is None and r.assignments == []
    assert run(s, [tick_record(2, mins(7))], mins(7)).sla == []


def test_stage_rejection_recycles_and_frees_capacity_in_the_same_batch() -> None:
    s = new_stage(rep("A", max_open_leads=1))
    first = run(s, [route_record(0, "L1"), route_record(1, "L2")], T0)
    assert [(a["type"], a["lead_id"]) for a in first.assignments] == [
        ("lead.assigned", "L1"), ("lead.queued", "L2")]
    rejected_at = mins(2)
    r = run(s, [activity_record(2, "L1", "A", "rejected", at=rejected_at,
                                reason="bad_timing", event_id="sa-9")], mins(3))
    assert r.recycle == [{"kind": "recycle", "lead_id": "L1", "cycle": 1,
                          "reason": "rejected: bad_timing", "trigger": "sa-9",
                          "occurred_at": rejected_at.isoformat()}]
    assert [(a["event_id"], a["type"], a["rep_id"]) for a in r.assignments] == [
        ("L2:c1:assign:1", "lead.assigned", "A")]
    assert r.writes[b"queue:global"] is None
    held = orjson.loads(r.writes[b"lead:L1"] or b"null")
    assert (held["open"], held["ended_by"]) == (False, "rejected")
    assert s.state is not None and s.state.open_by_rep == {"A": {"L2"}}
    assert s.state.timed == {"L2"}  # the rejected lead's clock is gone
    assert run(s, [tick_record(3, mins(4.5))], mins(4.5)).sla[0]["lead_id"] == "L2"


def test_stage_release_recycles_too() -> None:
    s = new_stage(rep("A", max_open_leads=1))
    run(s, [route_record(0, "L1"), route_record(1, "L2")], T0)
    r = run(s, [activity_record(2, "L1", "A", "released", at=mins(1), event_id="sa-r")],
            mins(1))
    assert r.recycle == [{"kind": "recycle", "lead_id": "L1", "cycle": 1,
                          "reason": "released", "trigger": "sa-r",
                          "occurred_at": mins(1).isoformat()}]
    assert [(a["lead_id"], a["rep_id"]) for a in r.assignments] == [("L2", "A")]
    # the lead qualifies again in cycle 2 and is routed again
    again = run(s, [Record(TOPICS.routing, 0, 3, b"L1", orjson.dumps(
        {"kind": "route", **request("L1", cycle=2).to_json()}))], mins(2))
    assert [(a["event_id"], a["type"]) for a in again.assignments] == [
        ("L1:c2:queued", "lead.queued")]  # A is full with L2


@pytest.mark.parametrize("kind", ["accepted", "disqualified", "converted"])
def test_stage_other_dispositions_do_not_recycle(kind: str) -> None:
    s = new_stage(rep("A", max_open_leads=1))
    run(s, [route_record(0, "L1"), route_record(1, "L2")], T0)
    r = run(s, [activity_record(2, "L1", "A", kind, at=mins(1))], mins(1))
    assert r.recycle == []
    assert r.other == []
    # but each frees A's slot for the queued lead
    assert [(a["lead_id"], a["rep_id"]) for a in r.assignments] == [("L2", "A")]
