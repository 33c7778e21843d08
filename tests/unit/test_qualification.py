"""SPEC §3 qualification rules, table-driven over the pure engine (no Kafka, no clock)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import orjson
import pytest

from router.domain.criteria import Assessment, assess, missing_for_next_stage
from router.domain.events import Stage, Touchpoint, Transition
from router.domain.handover import score
from router.domain.lead_state import (
    LeadState,
    pricing_capacity,
    recent_capacity,
    record_profile,
    record_touchpoint,
)
from router.domain.qualification import apply_profile, apply_touchpoint, decide, event_time_problem
from router.domain.rules import Rules, load_rules, parse_rules
from tests.unit.builders import (
    LEAD,
    NAMED_ACCOUNTS,
    T0,
    Event,
    apply,
    at,
    ctx,
    profile,
    run,
    tp,
)

RULES = load_rules()


# --------------------------------------------------------------------------------------------
# Builders (the shared ones, profile, tp, run and the like, are in tests/unit/builders.py)
# --------------------------------------------------------------------------------------------


def summary(transitions: Sequence[Transition]) -> list[str]:
    """`<stage>/<path> by <trigger>`, with profile triggers shortened to `profile`."""
    rows = []
    for t in transitions:
        trigger = "profile" if t.triggered_by.startswith("profile@") else t.triggered_by
        assert t.path is not None
        rows.append(f"{t.to_stage.value}/{t.path.value} by {trigger}")
    return rows


def rules_with(yaml_text: str) -> Rules:
    return parse_rules(yaml_text, "test-rules.yaml")


# --------------------------------------------------------------------------------------------
# The stage decision, scenario by scenario
# --------------------------------------------------------------------------------------------

NOT_FIT = {"employees": 10}
MQL_ONLY_AUTHORITY = {"seniority": "manager", "role": "end_user"}
ABM_NOT_FIT = {"domain": "bigco.com", "employees": 10, "industry": "retail"}

# (id, events, expected transitions in order, final stage)
SCENARIOS: list[tuple[str, list[Event], list[str], Stage]] = [
    (
        "standard: MQL at the 2nd touch, SQL at the 4th with 2 pricing views",
        [profile(), tp("page_view", 0), tp("pricing_page_view", 1), tp("email_click", 2),
         tp("pricing_page_view", 3)],
        ["mql/standard by pricing_page_view-d1", "sql/standard by pricing_page_view-d3"],
        Stage.SQL,
    ),
    (
        "standard: no intent among the touches means no MQL",
        [profile(), tp("page_view", 0), tp("email_click", 1), tp("email_open", 2)],
        [],
        Stage.NEW,
    ),
    (
        "standard: 4 touches and 1 pricing view is MQL, not SQL",
        [profile(), tp("page_view", 0), tp("pricing_page_view", 1), tp("email_click", 2),
         tp("webinar_attended", 3)],
        ["mql/standard by pricing_page_view-d1"],
        Stage.MQL,
    ),
    (
        "standard: SQL criteria met straight from new emit MQL first",
        [profile(), tp("page_view", 0), tp("email_click", 1), tp("page_view", 2, id="pv2"),
         tp("demo_request", 3)],
        ["mql/standard by demo_request-d3", "sql/standard by demo_request-d3"],
        Stage.SQL,
    ),
    (
        "profile after the touchpoints re-evaluates at once (MQL then SQL)",
        [tp("page_view", 0), tp("pricing_page_view", 1), tp("email_click", 2),
         tp("pricing_page_view", 3), profile(day=4)],
        ["mql/standard by profile", "sql/standard by profile"],
        Stage.SQL,
    ),
    (
        "profile after the touchpoints: MQL only",
        [tp("page_view", 0), tp("product_page_view", 1), profile(day=2)],
        ["mql/standard by profile"],
        Stage.MQL,
    ),
    (
        "direct: a demo request alone is SQL, no MQL emitted",
        [profile(), tp("demo_request", 0)],
        ["sql/direct by demo_request-d0"],
        Stage.SQL,
    ),
    (
        "direct: MQL criteria hold too, still no MQL emitted",
        [profile(), tp("page_view", 0), tp("contact_form", 1)],
        ["sql/direct by contact_form-d1"],
        Stage.SQL,
    ),
    (
        "direct from MQL: talk-to-sales before the engagement count is reached",
        [profile(), tp("page_view", 0), tp("product_page_view", 1), tp("calendar_booked", 2)],
        ["mql/standard by product_page_view-d1", "sql/direct by calendar_booked-d2"],
        Stage.SQL,
    ),
    (
        "standard beats direct when both hold",
        [profile(), tp("page_view", 0), tp("product_page_view", 1), tp("email_click", 2),
         tp("demo_request", 3)],
        ["mql/standard by product_page_view-d1", "sql/standard by demo_request-d3"],
        Stage.SQL,
    ),
    (
        "direct waits for the profile, then fires without MQL",
        [tp("chat_talk_to_sales", 0), profile(day=1)],
        ["sql/direct by profile"],
        Stage.SQL,
    ),
    (
        "abm: not fit, MQL then SQL on pricing views without 4 touches",
        [profile(**ABM_NOT_FIT), tp("page_view", 0), tp("pricing_page_view", 1),
         tp("pricing_page_view", 2)],
        ["mql/abm by pricing_page_view-d1", "sql/abm by pricing_page_view-d2"],
        Stage.SQL,
    ),
    (
        "abm: named account from the touchpoint's account_domain (any case)",
        [profile(employees=None, industry=None), tp("demo_request", 0, domain="BigCo.com")],
        ["sql/abm by demo_request-d0"],
        Stage.SQL,
    ),
    (
        "abm beats standard and direct",
        [profile(domain="bigco.com"), tp("page_view", 0), tp("demo_request", 1)],
        ["mql/abm by demo_request-d1", "sql/abm by demo_request-d1"],
        Stage.SQL,
    ),
    (
        "abm: a later touch from another domain keeps the named account",
        [profile(employees=None, industry=None), tp("page_view", 0, domain="bigco.com"),
         tp("pricing_page_view", 1), tp("email_click", 2, domain="gmail.com")],
        ["mql/abm by pricing_page_view-d1"],
        Stage.MQL,
    ),
    (
        "abm: a named-account touch arriving after a newer other-domain touch still counts",
        [profile(employees=None, industry=None), tp("email_click", 2, domain="gmail.com"),
         tp("page_view", 0, domain="bigco.com"), tp("pricing_page_view", 1)],
        ["mql/abm by pricing_page_view-d1"],
        Stage.MQL,
    ),
    (
        "abm: SQL still needs SQL authority",
        [profile(**ABM_NOT_FIT, **MQL_ONLY_AUTHORITY), tp("page_view", 0),
         tp("demo_request", 1)],
        ["mql/abm by demo_request-d1"],
        Stage.MQL,
    ),
    (
        "abm: SQL still needs SQL intent",
        [profile(**ABM_NOT_FIT), tp("page_view", 0), tp("product_page_view", 1),
         tp("email_click", 2), tp("page_view", 3, id="pv3"), tp("content_download", 4)],
        ["mql/abm by product_page_view-d1"],
        Stage.MQL,
    ),
    (
        "abm: profile arriving last emits MQL then SQL",
        [tp("page_view", 0), tp("pricing_page_view", 1), tp("pricing_page_view", 2),
         profile(**ABM_NOT_FIT, day=3)],
        ["mql/abm by profile", "sql/abm by profile"],
        Stage.SQL,
    ),
    (
        "not fit (too small): nothing, even with a demo request",
        [profile(**NOT_FIT), tp("page_view", 0), tp("pricing_page_view", 1),
         tp("pricing_page_view", 2), tp("demo_request", 3)],
        [],
        Stage.NEW,
    ),
    (
        "not fit (industry): nothing",
        [profile(industry="retail"), tp("page_view", 0), tp("demo_request", 1)],
        [],
        Stage.NEW,
    ),
    (
        "unknown employees: not fit yet",
        [profile(employees=None), tp("page_view", 0), tp("demo_request", 1)],
        [],
        Stage.NEW,
    ),
    (
        "unknown industry: not fit yet",
        [profile(industry=None), tp("page_view", 0), tp("demo_request", 1)],
        [],
        Stage.NEW,
    ),
    (
        "no company at all: not fit yet",
        [profile(company=False), tp("page_view", 0), tp("demo_request", 1)],
        [],
        Stage.NEW,
    ),
    (
        "no profile at all: nothing",
        [tp("page_view", 0), tp("pricing_page_view", 1), tp("email_click", 2),
         tp("pricing_page_view", 3), tp("demo_request", 4)],
        [],
        Stage.NEW,
    ),
    (
        "MQL authority but not SQL authority: stays MQL, even with talk-to-sales",
        [profile(**MQL_ONLY_AUTHORITY), tp("page_view", 0), tp("pricing_page_view", 1),
         tp("email_click", 2), tp("pricing_page_view", 3), tp("demo_request", 4)],
        ["mql/standard by pricing_page_view-d1"],
        Stage.MQL,
    ),
    (
        "influencer role with ic seniority: MQL authority only",
        [profile(seniority="ic", role="influencer"), tp("page_view", 0),
         tp("pricing_page_view", 1), tp("demo_request", 2)],
        ["mql/standard by pricing_page_view-d1"],
        Stage.MQL,
    ),
    (
        "decision maker with ic seniority has SQL authority",
        [profile(seniority="ic", role="decision_maker"), tp("demo_request", 0)],
        ["sql/direct by demo_request-d0"],
        Stage.SQL,
    ),
    (
        "vp seniority with unknown role has SQL authority",
        [profile(seniority="vp", role="unknown"), tp("demo_request", 0)],
        ["sql/direct by demo_request-d0"],
        Stage.SQL,
    ),
    (
        "senior_ic end_user: no authority at all",
        [profile(seniority="senior_ic", role="end_user"), tp("page_view", 0),
         tp("pricing_page_view", 1), tp("demo_request", 2)],
        [],
        Stage.NEW,
    ),
    (
        "duplicates counted once: 3 distinct touches of 5 deliveries, 1 pricing view",
        [profile(), tp("page_view", 0, id="a"), tp("page_view", 0, id="a"),
         tp("pricing_page_view", 1, id="b"), tp("pricing_page_view", 1, id="b"),
         tp("email_click", 2, id="c")],
        ["mql/standard by b"],
        Stage.MQL,
    ),
    (
        "duplicate of the only intent touch does not make a second pricing view",
        [profile(), tp("page_view", 0), tp("email_click", 1), tp("page_view", 2, id="pv2"),
         tp("pricing_page_view", 3, id="p"), tp("pricing_page_view", 3, id="p")],
        ["mql/standard by p"],
        Stage.MQL,
    ),
    (
        "out of order: newest first still reaches MQL then SQL",
        [profile(), tp("pricing_page_view", 3), tp("email_click", 2),
         tp("pricing_page_view", 1), tp("page_view", 0)],
        ["mql/standard by email_click-d2", "sql/standard by page_view-d0"],
        Stage.SQL,
    ),
    (
        "out of order: a late touch older than the window is ignored",
        [profile(), tp("page_view", 40), tp("email_click", 41), tp("pricing_page_view", 5)],
        [],
        Stage.NEW,
    ),
    (
        "out of order: a late touch inside the window counts",
        [profile(), tp("page_view", 40), tp("email_click", 41), tp("pricing_page_view", 20)],
        ["mql/standard by pricing_page_view-d20"],
        Stage.MQL,
    ),
    (
        "30-day window: touches 31+ days older than the newest no longer count",
        [profile(), tp("page_view", 0), tp("email_click", 1), tp("pricing_page_view", 32)],
        [],
        Stage.NEW,
    ),
    (
        "30-day window: a touch exactly 30 days old still counts",
        [profile(), tp("page_view", 0), tp("pricing_page_view", 30)],
        ["mql/standard by pricing_page_view-d30"],
        Stage.MQL,
    ),
    (
        "30-day window: an intent touch that left the window no longer counts",
        [profile(), tp("pricing_page_view", 0), tp("page_view", 31), tp("email_click", 32)],
        [],
        Stage.NEW,
    ),
    (
        "30-day window: a talk-to-sales action that left the window no longer counts",
        [tp("demo_request", 0), tp("page_view", 31), profile(day=31)],
        [],
        Stage.NEW,
    ),
    (
        "7-day window: 2 pricing views 7 days apart are SQL intent",
        [profile(), tp("pricing_page_view", 0), tp("page_view", 1), tp("email_click", 2),
         tp("pricing_page_view", 7)],
        ["mql/standard by page_view-d1", "sql/standard by pricing_page_view-d7"],
        Stage.SQL,
    ),
    (
        "7-day window: 2 pricing views 8 days apart are not",
        [profile(), tp("pricing_page_view", 0), tp("page_view", 1), tp("email_click", 2),
         tp("pricing_page_view", 8)],
        ["mql/standard by page_view-d1"],
        Stage.MQL,
    ),
    (
        "7-day window: any 7 days of the 30, not only the latest",
        [profile(), tp("pricing_page_view", 0), tp("pricing_page_view", 5),
         tp("page_view", 20), tp("email_click", 25)],
        ["mql/standard by pricing_page_view-d5", "sql/standard by email_click-d25"],
        Stage.SQL,
    ),
    (
        "quiz score 80 is a talk-to-sales action",
        [profile(), tp("quiz_completed", 0, score=80)],
        ["sql/direct by quiz_completed-d0"],
        Stage.SQL,
    ),
    (
        "quiz score 95.5 is a talk-to-sales action",
        [profile(), tp("quiz_completed", 0, score=95.5)],
        ["sql/direct by quiz_completed-d0"],
        Stage.SQL,
    ),
    (
        "quiz score 79 is intent but not talk-to-sales",
        [profile(), tp("quiz_completed", 0, score=79), tp("page_view", 1)],
        ["mql/standard by page_view-d1"],
        Stage.MQL,
    ),
    (
        "quiz score as a string is not talk-to-sales",
        [profile(), tp("quiz_completed", 0, score="95")],
        [],
        Stage.NEW,
    ),
    (
        "quiz score true is not talk-to-sales",
        [profile(), tp("quiz_completed", 0, score=True)],
        [],
        Stage.NEW,
    ),
    (
        "quiz without a score is not talk-to-sales",
        [profile(), tp("quiz_completed", 0)],
        [],
        Stage.NEW,
    ),
    (
        "after SQL nothing more is emitted",
        [profile(), tp("demo_request", 0), tp("page_view", 1), tp("pricing_page_view", 2),
         tp("pricing_page_view", 3), tp("calendar_booked", 4), profile(day=5)],
        ["sql/direct by demo_request-d0"],
        Stage.SQL,
    ),
    (
        "after MQL, more MQL-level touches emit no second MQL",
        [profile(), tp("page_view", 0), tp("product_page_view", 1), tp("email_click", 2),
         tp("product_page_view", 3), tp("content_download", 4), profile(day=5)],
        ["mql/standard by product_page_view-d1"],
        Stage.MQL,
    ),
]

@pytest.mark.parametrize(
    ("events", "expected", "final"),
    [pytest.param(ev, exp, fin, id=name) for name, ev, exp, fin in SCENARIOS],
)
def test_scenario(events: list[Event], expected: list[str], final: Stage) -> None:
    state, transitions = run(events)
    assert summary(transitions) == expected
    assert state.stage is final


@pytest.mark.parametrize(
    "kind", ["demo_request", "calendar_booked", "contact_form", "chat_talk_to_sales"]
)
def test_every_talk_to_sales_type_is_direct(kind: str) -> None:
    _, transitions = run([profile(), tp(kind, 0)])
    assert summary(transitions) == [f"sql/direct by {kind}-d0"]


@pytest.mark.parametrize(
    ("employees", "fit"),
    [
        pytest.param(49, False, id="49-below"),
        pytest.param(50, True, id="50-min-inclusive"),
        pytest.param(2000, True, id="2000-max-inclusive"),
        pytest.param(2001, False, id="2001-above"),
        pytest.param(0, False, id="0"),
    ],
)
def test_employee_band_is_inclusive(employees: int, fit: bool) -> None:
    state, transitions = run([profile(employees=employees), tp("demo_request", 0)])
    assert state.stage is (Stage.SQL if fit else Stage.NEW)
    assert assess(state, RULES, lambda _d: False).fit is fit
    assert len(transitions) == (1 if fit else 0)


@pytest.mark.parametrize(
    "industry", ["saas", "software", "financial_services", "business_services"]
)
def test_every_target_industry_is_fit(industry: str) -> None:
    state, _ = run([profile(industry=industry), tp("demo_request", 0)])
    assert state.stage is Stage.SQL


# --------------------------------------------------------------------------------------------
# Criteria details
# --------------------------------------------------------------------------------------------


def assessed(events: Sequence[Event], rules: Rules = RULES) -> tuple[LeadState, Assessment]:
    state, _ = run(events, rules)
    return state, assess(state, rules, NAMED_ACCOUNTS.__contains__)


@pytest.mark.parametrize(
    ("days", "cluster", "sql_intent"),
    [
        pytest.param([0, 6], 2, True, id="6-days-apart"),
        pytest.param([0, 7], 2, True, id="7-days-apart-inclusive"),
        pytest.param([0, 8], 1, False, id="8-days-apart"),
        pytest.param([0, 8, 16, 24], 1, False, id="every-8-days"),
        pytest.param([0, 8, 12, 24], 2, True, id="pair-in-the-middle"),
        pytest.param([0], 1, False, id="single"),
        pytest.param([], 0, False, id="none"),
    ],
)
def test_pricing_views_within_7_days(days: list[float], cluster: int, sql_intent: bool) -> None:
    events = [tp("pricing_page_view", d) for d in days]
    _, a = assessed([profile(), *events])
    assert a.detail["intent"]["pricing_views_within_pair_window"] == cluster
    assert a.sql_intent is sql_intent
    assert a.talk_to_sales is False


def test_pricing_pair_leaves_the_window_when_newer_touches_arrive() -> None:
    events: list[Event] = [profile(), tp("pricing_page_view", 0), tp("pricing_page_view", 2)]
    _, before = assessed(events)
    assert before.sql_intent
    _, after = assessed([*events, tp("page_view", 31)])
    assert after.detail["intent"]["pricing_views_within_pair_window"] == 1
    assert not after.sql_intent
    assert after.detail["engagement"]["touchpoints_in_window"] == 2


def test_the_detail_shows_the_lead_as_it_was_when_assessed() -> None:
    """The detail's dicts are built on first read; what they show is taken when assessed, so
    a lead that changes in between does not change an assessment already made."""
    state, _ = run([profile(domain="bigco.com"), tp("pricing_page_view", 0), tp("page_view", 1),
                    tp("demo_request", 2)])
    early = assess(state, RULES, NAMED_ACCOUNTS.__contains__)
    read_at_once = assess(state, RULES, NAMED_ACCOUNTS.__contains__).detail
    apply(state, tp("pricing_page_view", 40), ctx())  # the window moves: most of it leaves
    apply(state, profile(seniority="ic", domain="small.io", day=41), ctx())
    assert assess(state, RULES, NAMED_ACCOUNTS.__contains__).detail != read_at_once
    assert early.detail == read_at_once
    assert early.detail is early.detail  # built once


def test_engagement_count_slides_with_the_newest_touch() -> None:
    events: list[Event] = [profile(), *(tp("page_view", d) for d in range(5))]
    _, a = assessed(events)
    assert a.detail["engagement"]["touchpoints_in_window"] == 5
    _, a = assessed([*events, tp("email_click", 32)])
    # days 0 and 1 fell out of [2, 32]
    assert a.detail["engagement"]["touchpoints_in_window"] == 4


def test_configured_windows_and_thresholds_are_used() -> None:
    rules = rules_with(
        "windows: {engagement_days: 10, pricing_pair_days: 2}\n"
        "engagement: {mql_min_touchpoints: 1, sql_min_touchpoints: 2}\n"
        "intent: {sql_min_pricing_views: 3}\n"
    )
    state, transitions = run(
        [profile(), tp("pricing_page_view", 0), tp("pricing_page_view", 1),
         tp("pricing_page_view", 3), tp("pricing_page_view", 3.5), tp("pricing_page_view", 4)],
        rules,
    )
    # MQL at the first touch (1 with intent); SQL needs 3 views within 2 days: days 3, 3.5, 4
    assert summary(transitions) == [
        "mql/standard by pricing_page_view-d0",
        "sql/standard by pricing_page_view-d4",
    ]
    assert state.stage is Stage.SQL


def test_engagement_without_required_intent_when_configured_off() -> None:
    rules = rules_with("engagement: {sql_requires_intent: false}\n")
    _, a = assessed([profile(), *(tp("page_view", d) for d in range(4))], rules)
    assert a.sql_engagement
    _, a = assessed([profile(), *(tp("page_view", d) for d in range(4))])
    assert not a.sql_engagement


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------


def test_a_profile_older_than_the_held_one_is_ignored() -> None:
    state = LeadState(LEAD)
    context = ctx()
    assert apply_profile(state, profile(day=5), context) == []
    stale = profile(day=3, **NOT_FIT)
    assert record_profile(state, stale) is False
    assert apply_profile(state, stale, context) == []
    assert state.profile is not None
    assert state.profile["company"]["employees"] == 420
    assert summary(apply_touchpoint(state, tp("demo_request", 6), context)) == [
        "sql/direct by demo_request-d6"
    ]


def test_a_newer_profile_replaces_the_held_one() -> None:
    state = LeadState(LEAD)
    context = ctx()
    apply_profile(state, profile(day=3), context)
    assert record_profile(state, profile(day=5, **NOT_FIT)) is True
    assert state.profile is not None
    assert state.profile["company"]["employees"] == 10
    assert apply_touchpoint(state, tp("demo_request", 6), context) == []


def test_profile_transition_occurs_at_the_profile_time() -> None:
    _, transitions = run([tp("demo_request", 0), profile(day=1)])
    (sql,) = transitions
    assert sql.triggered_by == "profile@2026-11-02T09:00:00.000Z"
    assert sql.occurred_at == at(1)


# --------------------------------------------------------------------------------------------
# Outputs: ids, score, handover
# --------------------------------------------------------------------------------------------


def test_transition_fields() -> None:
    _, (mql, sql) = run(SCENARIOS[0][1])
    assert mql.event_id == "L-1:c1:mql"
    assert sql.event_id == "L-1:c1:sql"
    assert (mql.type, mql.from_stage, mql.to_stage) == ("lead.mql", Stage.NEW, Stage.MQL)
    assert (sql.type, sql.from_stage, sql.to_stage) == ("lead.sql", Stage.MQL, Stage.SQL)
    assert mql.cycle == sql.cycle == 1
    assert mql.handover is None and sql.handover is not None
    assert sql.occurred_at == at(3)
    assert sql.rules_version == RULES.version and sql.rules_version.startswith("default@")
    assert sql.router_version == "test"
    assert set(sql.criteria) == {"fit", "authority", "engagement", "intent"}
    assert sql.criteria["engagement"]["touchpoints_in_window"] == 4
    assert sql.criteria["intent"]["pricing_views_within_pair_window"] == 2


def test_a_lead_never_emits_the_same_stage_twice() -> None:
    events: list[Event] = [profile()]
    for day in range(25):
        kind = ["page_view", "pricing_page_view", "demo_request", "quiz_completed"][day % 4]
        events.append(tp(kind, day, score=90 if kind == "quiz_completed" else None))
        events.append(profile(day=day + 0.5))
    _, transitions = run(events)
    ids = [t.event_id for t in transitions]
    assert len(ids) == len(set(ids))
    assert [t.to_stage for t in transitions] == [Stage.MQL, Stage.SQL]


def test_decide_on_a_sql_lead_is_a_no_op() -> None:
    state, _ = run([profile(), tp("demo_request", 0)])
    assert decide(state, "again", at(1), ctx()) == []
    assert state.stage is Stage.SQL


def test_score_bounds_and_extremes() -> None:
    empty = assess(LeadState(LEAD), RULES, lambda _d: False)
    assert score(empty, RULES) == 0
    best_events: list[Event] = [profile(seniority="c_level")]
    best_events += [tp("page_view", d) for d in range(8)]
    best_events.append(tp("demo_request", 9))
    _, best = assessed(best_events)
    assert score(best, RULES) == 100


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([profile(**NOT_FIT)], id="not-fit-profile-only"),
        pytest.param([profile(employees=None)], id="half-known-fit"),
        pytest.param([profile(), tp("page_view", 0)], id="one-touch"),
        pytest.param([profile(**MQL_ONLY_AUTHORITY), tp("pricing_page_view", 0),
                      tp("pricing_page_view", 1)], id="pricing-pair"),
        pytest.param([profile(**ABM_NOT_FIT), tp("quiz_completed", 0, score=10)], id="abm"),
        pytest.param([tp("demo_request", d) for d in range(30)], id="no-profile"),
    ],
)
def test_score_is_between_0_and_100(events: list[Event]) -> None:
    _, a = assessed(events)
    assert 0 <= score(a, RULES) <= 100


def test_score_does_not_decide_the_stage() -> None:
    # every weight on authority: a c-level not-fit lead scores high and is still not qualified
    rules = rules_with("score: {weights: {fit: 0, authority: 100, engagement: 0, intent: 0}}\n")
    state, transitions = run([profile(seniority="c_level", **NOT_FIT), tp("demo_request", 0)],
                             rules)
    assert score(assess(state, rules, lambda _d: False), rules) == 100
    assert transitions == []


def test_score_grows_with_engagement_and_intent() -> None:
    _, low = assessed([profile(), tp("page_view", 0)])
    _, mid = assessed([profile(), tp("page_view", 0), tp("pricing_page_view", 1)])
    _, high = assessed([profile(), tp("page_view", 0), tp("pricing_page_view", 1),
                        tp("demo_request", 2)])
    assert score(low, RULES) < score(mid, RULES) < score(high, RULES)


def test_handover_for_a_high_intent_sql() -> None:
    events: list[Event] = [
        profile(),
        tp("webinar_attended", 0, topic="data quality"),
        tp("content_download", 1, title="ETL guide"),
        tp("pricing_page_view", 2),
        tp("demo_request", 3),
    ]
    _, transitions = run(events)
    sql = transitions[-1]
    assert sql.handover is not None
    h = sql.handover
    assert h.sla_class == "high_intent"
    assert h.score == sql.score and 0 <= h.score <= 100
    assert h.talking_points == ["pricing", "ETL guide", "data quality"]
    assert [e["event_id"] for e in h.engagement_timeline] == [
        "demo_request-d3", "pricing_page_view-d2", "content_download-d1", "webinar_attended-d0"
    ]
    assert h.engagement_timeline[0]["occurred_at"] == "2026-11-04T09:00:00.000Z"
    assert {s["type"] for s in h.intent_signals} == {"demo_request", "pricing_page_view"}
    assert h.profile is not None and h.profile["company"]["domain"] == "acme.io"
    assert h.fit["met"] is True
    assert h.authority["sql_met"] is True


def test_handover_for_a_behavioural_sql() -> None:
    _, transitions = run(SCENARIOS[0][1])
    h = transitions[-1].handover
    assert h is not None
    assert h.sla_class == "behavioural"
    assert h.talking_points == ["pricing"]


def test_sla_class_is_high_intent_when_a_profile_triggers_a_talk_to_sales_lead() -> None:
    # the SQL is triggered by the profile; the demo request in the window makes it high intent
    _, transitions = run([tp("demo_request", 0), tp("page_view", 1), profile(day=2)])
    assert summary(transitions) == ["sql/direct by profile"]
    handover = transitions[-1].handover
    assert handover is not None and handover.sla_class == "high_intent"


@pytest.mark.parametrize(("size", "touches"), [(3, 12), (10, 25), (1, 4)])
def test_handover_timeline_is_bounded_by_rules(size: int, touches: int) -> None:
    rules = rules_with(f"handover: {{timeline_size: {size}, talking_points: 2}}\n")
    events: list[Event] = [profile()]
    events += [tp("page_view", d * 0.1, topic=f"t{d}") for d in range(touches - 1)]
    events.append(tp("demo_request", touches))
    _, transitions = run(events, rules)
    h = transitions[-1].handover
    assert h is not None
    assert len(h.engagement_timeline) == min(size, touches)
    assert h.engagement_timeline[0]["event_id"] == f"demo_request-d{touches}"
    assert len(h.talking_points) == 2


# --------------------------------------------------------------------------------------------
# "Why is this lead not SQL yet"
# --------------------------------------------------------------------------------------------


def test_missing_for_next_stage_explains_each_missing_criterion() -> None:
    state, a = assessed([profile(employees=10, seniority="manager", role="end_user"),
                         tp("page_view", 0), tp("pricing_page_view", 1)])
    assert missing_for_next_stage(state, a) == [
        "fit: employees 10 outside [50, 2000]",
        "authority: manager/end_user is below SQL authority",
        "engagement 2/4 in 30 days",
        "intent: no talk-to-sales action yet and 1/2 pricing views within 7 days",
    ]


def test_missing_for_next_stage_unknown_fit_and_no_intent() -> None:
    state, a = assessed([profile(company=False), tp("page_view", 0)])
    missing = missing_for_next_stage(state, a)
    assert missing[0] == "fit: employees unknown; industry unknown"
    assert "engagement 1/4 in 30 days, no intent touchpoint among them" in missing


def test_missing_for_next_stage_mql_lead_lacks_only_intent() -> None:
    state, a = assessed([profile(), tp("page_view", 0), tp("pricing_page_view", 1),
                         tp("email_click", 2), tp("page_view", 3, id="pv3")])
    assert state.stage is Stage.MQL
    assert missing_for_next_stage(state, a) == [
        "intent: no talk-to-sales action yet and 1/2 pricing views within 7 days"
    ]


def test_missing_for_next_stage_abm_skips_fit_and_engagement() -> None:
    state, a = assessed([profile(**ABM_NOT_FIT, **MQL_ONLY_AUTHORITY), tp("page_view", 0)])
    missing = missing_for_next_stage(state, a)
    assert [m.split(":")[0].split(" ")[0] for m in missing] == ["authority", "intent"]


def test_missing_for_next_stage_is_empty_once_sql() -> None:
    state, a = assessed([profile(), tp("demo_request", 0)])
    assert state.stage is Stage.SQL
    assert missing_for_next_stage(state, a) == []


# --------------------------------------------------------------------------------------------
# Event time, bounded state, serialisation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ahead_seconds", "refused"),
    [
        pytest.param(-86400 * 400, False, id="old"),
        pytest.param(0, False, id="now"),
        pytest.param(300, False, id="5-minutes-ahead"),
        pytest.param(301, True, id="just-over-5-minutes"),
        pytest.param(86400, True, id="a-day-ahead"),
    ],
)
def test_future_dated_events(ahead_seconds: int, refused: bool) -> None:
    now = at(0)
    problem = event_time_problem(now + timedelta(seconds=ahead_seconds), now, RULES)
    if refused:
        assert problem is not None
        assert f"{ahead_seconds} s in the future" in problem
        assert "300 s" in problem
    else:
        assert problem is None


def test_future_limit_is_configurable() -> None:
    rules = rules_with("input: {max_future_seconds: 0}\n")
    now = at(0)
    assert event_time_problem(now + timedelta(seconds=1), now, rules) is not None
    assert event_time_problem(now, now, rules) is None


def test_state_stays_bounded_over_100k_touchpoints() -> None:
    state = LeadState(LEAD)
    context = ctx()
    apply_profile(state, profile(seniority="ic", role="end_user", email="a" * 300 + "@x.io",
                                 name="n" * 256, title="t" * 256), context)
    kinds = ["page_view", "pricing_page_view", "email_click", "product_page_view",
             "demo_request"]
    sizes = []
    for i in range(100_000):
        touch = Touchpoint.model_validate({
            "event_id": f"tp-{i:06d}",
            "lead_id": LEAD,
            "type": kinds[i % len(kinds)],
            "occurred_at": (T0 + timedelta(minutes=7 * i)).isoformat(),
            "account_domain": f"d{i % 7}.example",
            "properties": {"topic": "x" * 500},
        })
        apply(state, touch, context)
        if i % 10_000 == 0:
            sizes.append(len(state.to_bytes()))
        assert len(state.recent) <= recent_capacity(RULES)
        assert len(state.pricing) <= pricing_capacity(RULES)
    assert len(state.recent) == recent_capacity(RULES) == 10
    assert len(state.pricing) == pricing_capacity(RULES) == 6
    data = state.to_bytes()
    assert len(data) < 4096
    assert max(sizes) < 4096
    assert state.stage is Stage.NEW  # no authority: it never qualified, yet it stayed small


def test_state_round_trips_through_bytes() -> None:
    state, _ = run([profile(domain="acme.io"), tp("page_view", 0, domain="acme.io"),
                    tp("pricing_page_view", 1, topic="pricing q4"), tp("demo_request", 2),
                    tp("quiz_completed", 2.5, score=90)])
    restored = LeadState.from_bytes(state.to_bytes())
    assert restored == state
    assert restored.to_bytes() == state.to_bytes()
    assert isinstance(restored.recent[0], tuple)
    assert isinstance(restored.account, tuple)


def test_restored_state_behaves_like_the_original() -> None:
    events: list[Event] = [profile(), tp("page_view", 0), tp("pricing_page_view", 1),
                           tp("page_view", 2, id="pv2")]
    state, _ = run(events)
    restored = LeadState.from_bytes(state.to_bytes())
    context = ctx()
    more = [tp("pricing_page_view", 1, id="pricing_page_view-d1"), tp("pricing_page_view", 3)]
    out_a = [t for e in more for t in apply(state, e, context)]
    out_b = [t for e in more for t in apply(restored, e, context)]
    assert summary(out_a) == summary(out_b) == ["sql/standard by pricing_page_view-d3"]
    assert state.to_bytes() == restored.to_bytes()


def test_empty_state_round_trips() -> None:
    state = LeadState("L-empty")
    assert LeadState.from_bytes(state.to_bytes()) == state


STORED_STATE = (  # format 1 as the changelogs of earlier releases hold it, byte for byte
    b'{"v":1,"id":"L-1","c":2,"s":"mql","n":1790000000.5,"r":[[1790000000.5,"tp-2",'
    b'"pricing_page_view","pricing"],[1789990000.0,"tp-1","page_view",null]],"i":[1790000000.5,'
    b'"tp-2","pricing_page_view","pricing"],"t":null,"p":[[1790000000.5,"tp-2",'
    b'"pricing_page_view","pricing"]],"pf":{"lead_id":"L-1","seniority":"vp"},'
    b'"pt":1789000000.0,"a":[1790000000.5,"acme.io"],"lt":"tp-2","cs":1788000000.0,'
    b'"ma":1790000000.5}'
)


def test_a_stored_state_reads_back_and_is_written_as_it_was() -> None:
    touch = (1790000000.5, "tp-2", "pricing_page_view", "pricing")
    state = LeadState.from_bytes(STORED_STATE)
    assert state == LeadState(
        "L-1", 2, Stage.MQL, 1790000000.5,
        [touch, (1789990000.0, "tp-1", "page_view", None)], touch, None, [touch],
        {"lead_id": "L-1", "seniority": "vp"}, 1789000000.0, (1790000000.5, "acme.io"),
        "tp-2", 1788000000.0, 1790000000.5)
    assert state.to_bytes() == STORED_STATE


@pytest.mark.parametrize(("damage", "error"), [
    ({"s": None}, KeyError), ({"s": "gone"}, ValueError), ({"r": [1]}, TypeError),
    ({"a": 7}, TypeError)])
def test_a_damaged_state_fails_as_it_always_did(damage: dict[str, object],
                                                error: type[Exception]) -> None:
    """index_partition skips a ValueError, process() dead-letters anything else: the kind of
    error a damaged state raises is part of how it is handled. (None: the field is gone.)"""
    raw = orjson.loads(STORED_STATE)
    for name, value in damage.items():
        if value is None:
            del raw[name]
        else:
            raw[name] = value
    with pytest.raises(error):
        LeadState.from_bytes(orjson.dumps(raw))


def test_unknown_state_format_is_refused() -> None:
    data = LeadState(LEAD).to_bytes().replace(b'"v":1', b'"v":99')
    with pytest.raises(ValueError, match="unsupported lead state format 99"):
        LeadState.from_bytes(data)


def test_two_states_fed_one_touchpoint_share_its_touch() -> None:
    """As a replay feeds each touchpoint to one state per rule set: the second state holds the
    same tuple the first made; another touchpoint (even an equal one) gets its own."""
    strict = rules_with("engagement: {sql_min_touchpoints: 5}\n")
    first, second, third = LeadState(LEAD), LeadState(LEAD), LeadState(LEAD)
    touch = tp("pricing_page_view", 1, topic="q4")
    assert record_touchpoint(first, touch, RULES) and record_touchpoint(second, touch, strict)
    assert second.recent[0] is first.recent[0]
    assert second.recent == first.recent == [(at(1).timestamp(), "pricing_page_view-d1",
                                              "pricing_page_view", "q4")]
    again = tp("pricing_page_view", 1, topic="q4")
    record_touchpoint(third, again, RULES)
    assert third.recent == first.recent and third.recent[0] is not first.recent[0]


def test_record_touchpoint_reports_whether_anything_changed() -> None:
    state = LeadState(LEAD)
    assert record_touchpoint(state, tp("page_view", 40), RULES) is True
    assert record_touchpoint(state, tp("page_view", 40), RULES) is False  # repeat
    assert record_touchpoint(state, tp("pricing_page_view", 5), RULES) is False  # too old
    assert record_touchpoint(state, tp("pricing_page_view", 20), RULES) is True
