"""Properties of the qualification engine (SPEC §3, §6): order, repeats and monotone stages."""

from __future__ import annotations

from bisect import insort
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from router.domain.criteria import assess
from router.domain.events import LeadProfile, Stage, Touchpoint, TouchpointType, Transition
from router.domain.lead_state import (
    LeadState,
    Touch,
    _insert_top,
    _limits,
    pricing_capacity,
    recent_capacity,
    record_touchpoint,
    touch_order,
)
from router.domain.qualification import Context, apply_profile, apply_touchpoint
from router.domain.rules import Rules, load_rules, parse_rules

RULES = load_rules()
T0 = datetime(2026, 11, 1, tzinfo=UTC)
LEAD = "L-prop"
DAY = 86400
WINDOW = RULES.windows.engagement_days * DAY
SETTINGS = settings(max_examples=200, deadline=None)
RANK = {Stage.NEW: 0, Stage.MQL: 1, Stage.SQL: 2}

CONTEXT = Context(rules=RULES, router_version="prop", emitted_at=T0,
                  is_named_account=lambda domain: domain == "bigco.com")

Event = Touchpoint | LeadProfile


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

PROFILES = st.builds(
    lambda seniority, role, employees, industry, domain: LeadProfile.model_validate(
        {
            "lead_id": LEAD,
            "updated_at": T0.isoformat(),
            "seniority": seniority,
            "buying_role": role,
            "company": {"domain": domain, "employees": employees, "industry": industry},
        }
    ),
    seniority=st.sampled_from(["c_level", "vp", "director", "manager", "ic", "unknown"]),
    role=st.sampled_from(["decision_maker", "influencer", "end_user", "unknown"]),
    employees=st.sampled_from([None, 10, 50, 420, 2000, 5000]),
    industry=st.sampled_from([None, "saas", "software", "retail"]),
    domain=st.sampled_from(["acme.io", "bigco.com"]),
)


@st.composite
def touchpoint_lists(draw: st.DrawFn, max_size: int = 12) -> list[Touchpoint]:
    """Distinct touchpoints of one lead, all inside one 30-day span (in arrival order)."""
    # a few seconds in [0, WINDOW], with whole days and 7-day edges made likely
    second = st.one_of(
        st.integers(0, WINDOW),
        st.integers(0, RULES.windows.engagement_days).map(lambda d: d * DAY),
        st.sampled_from([0, 7 * DAY, 7 * DAY + 1, WINDOW]),
    )
    spec = st.tuples(
        st.sampled_from(list(TouchpointType)),
        second,
        st.sampled_from([None, "acme.io", "bigco.com"]),
        st.sampled_from([None, 50, 80, 99]),
    )
    rows = draw(st.lists(spec, min_size=1, max_size=max_size))
    out = []
    for n, (kind, offset, domain, score) in enumerate(rows):
        props: dict[str, Any] = {"topic": f"topic-{n % 3}"}
        if score is not None:
            props["score"] = score
        out.append(
            Touchpoint.model_validate(
                {
                    "event_id": f"tp-{n}",
                    "lead_id": LEAD,
                    "type": kind.value,
                    "occurred_at": (T0 + timedelta(seconds=offset)).isoformat(),
                    "account_domain": domain,
                    "properties": props,
                }
            )
        )
    return out


def with_profile(draw: st.DrawFn, touches: list[Touchpoint], profile: LeadProfile) -> list[Event]:
    position = draw(st.integers(0, len(touches)))
    return [*touches[:position], profile, *touches[position:]]


def play(events: list[Event]) -> tuple[LeadState, list[Transition], list[Stage]]:
    state = LeadState(LEAD)
    transitions: list[Transition] = []
    stages = []
    for event in events:
        if isinstance(event, Touchpoint):
            transitions.extend(apply_touchpoint(state, event, CONTEXT))
        else:
            transitions.extend(apply_profile(state, event, CONTEXT))
        stages.append(state.stage)
    return state, transitions, stages


def summaries(state: LeadState) -> tuple[Any, ...]:
    """The order-independent part of the state (not the stage history or the last trigger)."""
    return (state.newest_ts, state.recent, state.last_intent, state.last_tts, state.pricing,
            state.profile, state.account)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data(), touches=touchpoint_lists(), profile=PROFILES)
def test_any_arrival_order_gives_the_same_final_stage(
    data: st.DataObject, touches: list[Touchpoint], profile: LeadProfile
) -> None:
    if data.draw(st.booleans(), label="profile first"):
        events_a: list[Event] = [profile, *touches]
    else:
        events_a = with_profile(data.draw, touches, profile)
    shuffled = data.draw(st.permutations(touches))
    events_b = with_profile(data.draw, shuffled, profile)

    state_a, out_a, _ = play(events_a)
    state_b, out_b, _ = play(events_b)
    assert state_a.stage is state_b.stage
    assert summaries(state_a) == summaries(state_b)
    # SQL is emitted once either way (the path, and whether an MQL came first, may differ:
    # a talk-to-sales action seen early is the direct path, seen last it may be standard)
    assert [t.to_stage for t in out_a].count(Stage.SQL) == [t.to_stage for t in out_b].count(
        Stage.SQL
    )
    # and the final stage is what the full set of events qualifies for
    a = assess(state_a, RULES, CONTEXT.is_named_account)
    if a.sql_abm or a.sql_standard or a.sql_direct:
        assert state_a.stage is Stage.SQL
    elif a.mql:
        assert state_a.stage is Stage.MQL
    else:
        assert state_a.stage is Stage.NEW


@SETTINGS
@given(data=st.data(), touches=touchpoint_lists(), profile=PROFILES)
def test_duplicating_any_event_changes_nothing(
    data: st.DataObject, touches: list[Touchpoint], profile: LeadProfile
) -> None:
    events = with_profile(data.draw, touches, profile)
    # repeat a few events, each somewhere after its first delivery
    with_repeats = list(events)
    for _ in range(data.draw(st.integers(1, 4))):
        original = data.draw(st.integers(0, len(events) - 1))
        first_at = with_repeats.index(events[original])
        at = data.draw(st.integers(first_at + 1, len(with_repeats)))
        with_repeats.insert(at, events[original])

    state_a, out_a, _ = play(events)
    state_b, out_b, _ = play(with_repeats)
    assert state_a.stage is state_b.stage
    assert state_a.to_bytes() == state_b.to_bytes()
    assert [t.model_dump() for t in out_a] == [t.model_dump() for t in out_b]


@SETTINGS
@given(data=st.data(), touches=touchpoint_lists(max_size=16), profile=PROFILES)
def test_the_stage_never_moves_backwards(
    data: st.DataObject, touches: list[Touchpoint], profile: LeadProfile
) -> None:
    # also with a second, different profile later on, and touches beyond the first 30 days
    later = data.draw(PROFILES).model_copy(update={"updated_at": T0 + timedelta(days=40)})
    moved = [t.model_copy(update={"occurred_at": t.occurred_at + timedelta(days=35)})
             for t in data.draw(touchpoint_lists(max_size=6))]
    moved = [t.model_copy(update={"event_id": f"late-{t.event_id}"}) for t in moved]
    events = [*with_profile(data.draw, touches, profile), *moved, later]

    _, transitions, stages = play(events)
    ranks = [RANK[s] for s in stages]
    assert ranks == sorted(ranks)
    ids = [t.event_id for t in transitions]
    assert len(ids) == len(set(ids))
    previous = Stage.NEW
    for t in transitions:
        assert t.from_stage is previous
        assert RANK[t.to_stage] > RANK[t.from_stage]
        previous = t.to_stage
    assert previous is stages[-1]


# --------------------------------------------------------------------------------------------
# The pigeonhole bound of pricing_capacity
# --------------------------------------------------------------------------------------------


def brute_force_cluster(times: list[int], rules: Rules) -> int:
    """Most pricing views inside any `pricing_pair_days` span of the trailing window."""
    newest = max(times)
    window = rules.windows.engagement_days * DAY
    pair = rules.windows.pricing_pair_days * DAY
    inside = sorted(t for t in times if t >= newest - window)
    return max(sum(1 for u in inside if start <= u <= start + pair) for start in inside)


@st.composite
def pricing_rules(draw: st.DrawFn) -> Rules:
    window = draw(st.integers(1, 40))
    pair = draw(st.integers(1, window))
    views = draw(st.integers(1, 5))
    return parse_rules(
        f"windows: {{engagement_days: {window}, pricing_pair_days: {pair}}}\n"
        f"intent: {{sql_min_pricing_views: {views}}}\n",
        "pigeonhole.yaml",
    )


@SETTINGS
@given(rules=pricing_rules(), data=st.data())
def test_bounded_pricing_state_decides_like_a_brute_force(
    rules: Rules, data: st.DataObject
) -> None:
    window = rules.windows.engagement_days
    # times over up to twice the window, so some views leave it; whole days and pair edges likely
    time = st.one_of(
        st.integers(0, 2 * window * DAY),
        st.integers(0, 2 * window).map(lambda d: d * DAY),
        st.integers(0, 2 * window).map(lambda d: d * DAY + rules.windows.pricing_pair_days * DAY),
    )
    times = data.draw(st.lists(time, min_size=1, max_size=40))
    state = LeadState(LEAD)
    for n, offset in enumerate(times):
        record_touchpoint(
            state,
            Touchpoint(event_id=f"p-{n}", lead_id=LEAD, type=TouchpointType.PRICING_PAGE_VIEW,
                       occurred_at=T0 + timedelta(seconds=offset)),
            rules,
        )
    assert len(state.pricing) <= pricing_capacity(rules)

    need = rules.intent.sql_min_pricing_views
    brute = brute_force_cluster(times, rules)
    a = assess(state, rules, lambda _d: False)
    held = a.detail["intent"]["pricing_views_within_pair_window"]
    assert a.sql_intent is (brute >= need)
    assert min(held, need) == min(brute, need)
    assert held <= brute


@SETTINGS
@given(data=st.data(), touches=touchpoint_lists(max_size=16), profile=PROFILES)
def test_no_intent_in_the_window_means_no_stage_can_move(
    data: st.DataObject, touches: list[Touchpoint], profile: LeadProfile
) -> None:
    """decide() skips the assessment while the window holds no intent touchpoint; at every
    such moment the full assessment must agree that no MQL or SQL path is open."""
    events = with_profile(data.draw, touches, profile)
    state = LeadState(LEAD)
    for event in events:
        if isinstance(event, Touchpoint):
            apply_touchpoint(state, event, CONTEXT)
        else:
            apply_profile(state, event, CONTEXT)
        intent_touches = [*state.pricing, *([state.last_tts] if state.last_tts else [])]
        if intent_touches:  # pricing views and talk-to-sales are intent types
            assert state.last_intent is not None and state.last_intent >= max(intent_touches)
        if state.last_intent is None and state.stage is not Stage.SQL:
            a = assess(state, RULES, CONTEXT.is_named_account)
            assert not (a.mql or a.sql_standard or a.sql_direct or a.sql_abm), a.detail



# --------------------------------------------------------------------------------------------
# The shortcuts of lead_state's updates
# --------------------------------------------------------------------------------------------


def _insert_top_by_bisect(touches: list[Touch], touch: Touch, capacity: int) -> bool:
    """_insert_top as it was before its shortcut for the newest touch: always by insort."""
    if any(held[1] == touch[1] for held in touches):
        return False
    if len(touches) >= capacity and touch_order(touch) > touch_order(touches[-1]):
        return False
    insort(touches, touch, key=touch_order)
    del touches[capacity:]
    return True


@SETTINGS
@given(capacity=st.integers(1, 6),
       touches=st.lists(st.tuples(st.sampled_from([0.0, 1.0, 2.0, 2.5, 3.0, 10.0]),
                                  st.sampled_from(["a", "b", "c", "d", "e", "f", "g"])),
                        max_size=30))
def test_insert_top_keeps_what_bisect_keeps(capacity: int,
                                            touches: list[tuple[float, str]]) -> None:
    """The newest-first shortcut (insert at the front) gives the list and the answer that
    insort gives, with ties in time, repeats and a full list."""
    fast: list[Touch] = []
    slow: list[Touch] = []
    for ts, event_id in touches:
        touch: Touch = (ts, event_id, "page_view", None)
        assert _insert_top(fast, touch, capacity) == _insert_top_by_bisect(slow, touch, capacity)
        assert fast == slow


def test_the_limits_are_the_rules_own() -> None:
    for rules in (RULES, parse_rules("windows: {engagement_days: 9, pricing_pair_days: 2}\n"
                                     "intent: {sql_min_pricing_views: 3}\n"
                                     "handover: {timeline_size: 3}\n", "limits.yaml")):
        limits = _limits(rules)
        assert (limits.window_seconds, limits.recent, limits.pricing, limits.quiz_score) == (
            rules.window_seconds, recent_capacity(rules), pricing_capacity(rules),
            rules.intent.quiz_talk_to_sales_score)
        assert _limits(rules) is limits


@SETTINGS
@given(touches=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(
    [None, "acme.io", "ACME.io", "bigco.com", "BigCo.com", "other.org"])), max_size=12))
def test_the_account_is_the_best_ranked_domain(touches: list[tuple[int, str | None]]) -> None:
    """Named accounts first, then the newest, then the domain: what comparing the full ranks
    gives (record_touchpoint skips the comparison for a repeat of the held domain)."""
    state = LeadState(LEAD)
    named = CONTEXT.is_named_account
    best: tuple[bool, float, str] | None = None
    for n, (day, domain) in enumerate(touches):
        touch = Touchpoint(event_id=f"a-{n}", lead_id=LEAD, type=TouchpointType.PAGE_VIEW,
                           occurred_at=T0 + timedelta(days=day), account_domain=domain)
        record_touchpoint(state, touch, RULES, named)
        if domain:
            rank = (named(domain.lower()), touch.occurred_at.timestamp(), domain.lower())
            best = rank if best is None or rank > best else best
        assert state.account == (None if best is None else (best[1], best[2]))
