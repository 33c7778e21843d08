"""The sales feedback loop on the qualification side (SPEC §2.2): a rejected or released lead is
recycled (`lead.recycled`), returns to `new` in the next cycle with its profile, forgets the
engagement of the old cycle, and can qualify again with cycle-2 ids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from router.adapters.topics import Topics
from router.domain.criteria import assess
from router.domain.events import (
    DeadLetter,
    LeadProfile,
    QualificationPath,
    SlaClass,
    Stage,
    Touchpoint,
    Transition,
)
from router.domain.lead_state import LeadState, record_touchpoint
from router.domain.qualification import Context, apply_profile, apply_recycle, apply_touchpoint
from router.domain.routing_state import RouteRequest
from router.domain.rules import load_rules
from router.records import Output, Record
from router.service.qualifier import Qualifier

RULES = load_rules()
TOPICS = Topics.with_prefix("")
VERSION = "test-recycle"
LEAD = "L-1"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=40)  # the router's clock: after every event used here


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def at(day: float) -> datetime:
    return T0 + timedelta(days=day)


def profile_data(day: float = 0, **fields: Any) -> dict[str, Any]:
    return {"lead_id": LEAD, "updated_at": at(day).isoformat(), "seniority": "director",
            "buying_role": "decision_maker", "language": "de", "country": "DE",
            "company": {"name": "Acme", "domain": "acme.io", "employees": 420,
                        "industry": "saas"}, **fields}


def touch_data(kind: str, day: float, event_id: str | None = None) -> dict[str, Any]:
    return {"event_id": event_id or f"{kind}-d{day:g}", "lead_id": LEAD, "type": kind,
            "occurred_at": at(day).isoformat()}


def profile(day: float = 0, **fields: Any) -> LeadProfile:
    return LeadProfile.model_validate(profile_data(day, **fields))


def tp(kind: str, day: float, event_id: str | None = None) -> Touchpoint:
    return Touchpoint.model_validate(touch_data(kind, day, event_id))


def ctx() -> Context:
    return Context(rules=RULES, router_version=VERSION, emitted_at=NOW)


def feed(state: LeadState, *events: Touchpoint | LeadProfile) -> list[Transition]:
    out: list[Transition] = []
    for e in events:
        out += (apply_touchpoint(state, e, ctx()) if isinstance(e, Touchpoint)
                else apply_profile(state, e, ctx()))
    return out


def rows(transitions: Sequence[Transition]) -> list[tuple[str, str, str, str | None]]:
    return [(t.event_id, t.from_stage.value, t.to_stage.value,
             t.path.value if t.path else None) for t in transitions]


def mql_lead() -> LeadState:
    state = LeadState(LEAD)
    out = feed(state, profile(), tp("page_view", 0), tp("pricing_page_view", 1))
    assert rows(out) == [("L-1:c1:mql", "new", "mql", "standard")]
    return state


def sql_lead() -> LeadState:
    state = mql_lead()
    out = feed(state, tp("email_click", 2), tp("pricing_page_view", 3))
    assert rows(out) == [("L-1:c1:sql", "mql", "sql", "standard")]
    return state


def recycle(state: LeadState, cycle: int = 1, day: float = 5, reason: str = "rejected: no_fit",
            trigger: str = "sa-9") -> list[Transition]:
    return apply_recycle(state, cycle, reason, trigger, at(day), ctx())


# --------------------------------------------------------------------------------------------
# apply_recycle
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "from_stage"), [(mql_lead, Stage.MQL), (sql_lead, Stage.SQL)], ids=["mql", "sql"]
)
def test_recycle_emits_lead_recycled_and_starts_the_next_cycle(make: Any,
                                                               from_stage: Stage) -> None:
    state = make()
    kept_profile, kept_profile_ts, kept_account = state.profile, state.profile_ts, state.account
    [t] = recycle(state, reason="rejected: bad_timing", trigger="sa-42")
    assert t.model_dump(mode="json", exclude={"score"}) == {
        "event_id": "L-1:c1:recycled",
        "type": "lead.recycled",
        "lead_id": LEAD,
        "cycle": 1,
        "from_stage": from_stage.value,
        "to_stage": "new",
        "path": None,
        "triggered_by": "sa-42",
        "occurred_at": "2026-11-07T09:00:00.000Z",
        "criteria": {"recycled_because": "rejected: bad_timing"},
        "handover": None,
        "router_version": VERSION,
        "rules_version": RULES.version,
        "emitted_at": "2026-12-12T09:00:00.000Z",
    }
    assert 0 <= t.score <= 100 and t.score > 0
    assert (state.cycle, state.stage) == (2, Stage.NEW)
    assert state.cycle_start == at(5).timestamp()
    assert (state.recent, state.pricing, state.last_intent, state.last_tts) == ([], [], None,
                                                                                 None)
    assert (state.profile, state.profile_ts, state.account) == (
        kept_profile, kept_profile_ts, kept_account)
    assert state.last_trigger == "sa-42"


def test_a_repeated_recycle_changes_nothing() -> None:
    state = sql_lead()
    assert len(recycle(state)) == 1
    before = state.to_bytes()
    assert recycle(state) == []
    assert recycle(state, day=9, trigger="sa-other") == []
    assert state.to_bytes() == before


@pytest.mark.parametrize("cycle", [1, 3], ids=["stale", "from-the-future"])
def test_a_recycle_for_another_cycle_changes_nothing(cycle: int) -> None:
    state = sql_lead()
    recycle(state)
    assert rows(feed(state, tp("demo_request", 6))) == [("L-1:c2:sql", "new", "sql", "direct")]
    before = state.to_bytes()
    assert recycle(state, cycle=cycle, day=7) == []
    assert state.to_bytes() == before
    assert (state.cycle, state.stage) == (2, Stage.SQL)


def test_a_lead_still_in_new_is_not_recycled() -> None:
    state = LeadState(LEAD)
    feed(state, profile(), tp("page_view", 0))
    assert state.stage is Stage.NEW
    before = state.to_bytes()
    assert recycle(state) == []
    assert state.to_bytes() == before
    assert (state.cycle, state.cycle_start) == (1, None)
    # its touches still count: it can qualify in cycle 1
    assert rows(feed(state, tp("pricing_page_view", 6))) == [
        ("L-1:c1:mql", "new", "mql", "standard")]


def test_touchpoints_older_than_the_recycle_are_ignored_in_the_next_cycle() -> None:
    state = sql_lead()
    recycle(state, day=5)
    # late arrivals from before the recycle, even a talk-to-sales action: none counts
    late = [tp("page_view", 4), tp("pricing_page_view", 4.5), tp("demo_request", 4.9)]
    for touch in late:
        assert record_touchpoint(state, touch, RULES) is False
    assert feed(state, *late) == []
    assert (state.recent, state.last_intent, state.last_tts) == ([], None, None)
    # one new touch is one touch in this cycle, not five
    assert feed(state, tp("pricing_page_view", 6)) == []
    a = assess(state, RULES, lambda _d: False)
    assert a.detail["engagement"]["touchpoints_in_window"] == 1
    assert a.detail["intent"]["pricing_views_within_pair_window"] == 1
    assert not a.mql and state.stage is Stage.NEW
    # the same touchpoints (same ids) replayed do not count twice either
    assert feed(state, tp("pricing_page_view", 6)) == []
    assert assess(state, RULES, lambda _d: False).detail["engagement"][
        "touchpoints_in_window"] == 1


def test_a_touchpoint_at_the_recycle_moment_belongs_to_the_new_cycle() -> None:
    state = sql_lead()
    recycle(state, day=5)
    assert record_touchpoint(state, tp("page_view", 5), RULES) is True
    assert record_touchpoint(state, tp("page_view", 5 - 1 / 86400), RULES) is False


def test_new_touchpoints_qualify_again_with_cycle_2_ids() -> None:
    state = sql_lead()
    recycle(state, day=5)
    assert rows(feed(state, tp("page_view", 6), tp("pricing_page_view", 7))) == [
        ("L-1:c2:mql", "new", "mql", "standard")]
    out = feed(state, tp("email_click", 8), tp("pricing_page_view", 9))
    assert rows(out) == [("L-1:c2:sql", "mql", "sql", "standard")]
    [sql] = out
    assert (sql.cycle, sql.triggered_by, sql.occurred_at) == (2, "pricing_page_view-d9", at(9))
    assert sql.handover is not None
    assert sql.handover.profile == profile().model_dump(mode="json", exclude_none=True)
    assert sql.handover.sla_class is SlaClass.BEHAVIOURAL
    # the timeline is this cycle's only
    assert [e["event_id"] for e in sql.handover.engagement_timeline] == [
        "pricing_page_view-d9", "email_click-d8", "pricing_page_view-d7", "page_view-d6"]
    assert (state.cycle, state.stage) == (2, Stage.SQL)


def test_direct_path_in_the_next_cycle() -> None:
    state = sql_lead()
    recycle(state, day=5)
    [sql] = feed(state, tp("demo_request", 5.5))
    assert (sql.event_id, sql.from_stage, sql.path, sql.cycle) == (
        "L-1:c2:sql", Stage.NEW, QualificationPath.DIRECT, 2)
    assert sql.handover is not None and sql.handover.sla_class is SlaClass.HIGH_INTENT


def test_the_profile_is_kept_across_the_recycle() -> None:
    state = sql_lead()
    recycle(state, day=5)
    assert state.profile is not None and state.profile["seniority"] == "director"
    a = assess(state, RULES, lambda _d: False)
    assert a.fit and a.sql_authority  # no need to send the profile again
    # and an older profile is still ignored after the recycle
    assert feed(state, profile(day=-1, seniority="ic", buying_role="end_user")) == []
    assert state.profile["seniority"] == "director"
    # a newer one replaces it as usual (and re-evaluates: nothing to qualify on yet)
    assert feed(state, profile(day=6, seniority="vp")) == []
    assert state.profile["seniority"] == "vp"


def test_a_lead_can_be_recycled_again_in_its_second_cycle() -> None:
    state = sql_lead()
    recycle(state, day=5)
    feed(state, tp("demo_request", 6))
    [again] = recycle(state, cycle=2, day=8, reason="released", trigger="sa-10")
    assert (again.event_id, again.cycle, again.from_stage, again.criteria) == (
        "L-1:c2:recycled", 2, Stage.SQL, {"recycled_because": "released"})
    assert (state.cycle, state.stage, state.cycle_start) == (3, Stage.NEW, at(8).timestamp())
    assert rows(feed(state, tp("calendar_booked", 9))) == [
        ("L-1:c3:sql", "new", "sql", "direct")]


def test_state_bytes_keep_the_cycle_start() -> None:
    state = sql_lead()
    recycle(state, day=5)
    restored = LeadState.from_bytes(state.to_bytes())
    assert restored == state
    assert (restored.cycle, restored.stage, restored.cycle_start) == (
        2, Stage.NEW, at(5).timestamp())
    # the restored state still refuses the old cycle's touches and qualifies on new ones
    assert feed(restored, tp("demo_request", 4)) == []
    assert rows(feed(restored, tp("demo_request", 6))) == [
        ("L-1:c2:sql", "new", "sql", "direct")]


def test_state_bytes_without_a_cycle_start() -> None:
    state = mql_lead()
    raw = orjson.loads(state.to_bytes())
    assert raw["cs"] is None
    del raw["cs"]  # a state written before recycling existed
    assert LeadState.from_bytes(orjson.dumps(raw)).cycle_start is None


def test_a_redelivered_touchpoint_of_the_old_cycle_does_not_count_again() -> None:
    """At-least-once: touchpoints seen before the recycle may be delivered again after it (a
    crash before the offsets were committed). A touch dated after the rejection but already
    folded into the old cycle must not come back in the new one, or a replay would re-qualify
    a lead that a run without the crash leaves in nurture."""
    state = sql_lead()
    seen = [tp("page_view", 6), tp("demo_request", 6.5)]  # arrive before the recycle record
    assert feed(state, *seen) == []  # already SQL
    [recycled] = recycle(state, day=5)  # the rejection happened before those touches
    assert recycled.type == "lead.recycled"
    assert state.cycle_start is not None and state.cycle_start > at(6.5).timestamp()
    for touch in seen:
        assert record_touchpoint(state, touch, RULES) is False
    assert feed(state, *seen) == []
    assert (state.stage, state.recent, state.last_tts) == (Stage.NEW, [], None)
    # new engagement counts as usual
    assert rows(feed(state, tp("contact_form", 7))) == [("L-1:c2:sql", "new", "sql", "direct")]


def test_a_redelivered_trigger_dated_after_the_rejection_does_not_requalify() -> None:
    """A touch may be dated up to 5 minutes ahead of the router's clock, and the rejection
    comes from another clock: the SQL's own trigger can be dated after the rejection."""
    state = LeadState(LEAD)
    trigger = tp("demo_request", 1 / 24)  # 01:00 after T0
    assert rows(feed(state, profile(), trigger)) == [("L-1:c1:sql", "new", "sql", "direct")]
    recycle(state, day=1 / 48)  # rejected "at" 00:30
    assert feed(state, trigger) == []
    assert (state.cycle, state.stage) == (2, Stage.NEW)


# --------------------------------------------------------------------------------------------
# Qualifier.process over records
# --------------------------------------------------------------------------------------------


def qualifier() -> Qualifier:
    return Qualifier(RULES, TOPICS, VERSION, lambda _domain: False)


def touch_record(offset: int, kind: str, day: float) -> Record:
    return Record(TOPICS.touchpoints, 4, offset, LEAD.encode(),
                  orjson.dumps(touch_data(kind, day)))


def profile_record(offset: int) -> Record:
    return Record(TOPICS.profiles, 4, offset, LEAD.encode(), orjson.dumps(profile_data()))


def recycle_record(offset: int, cycle: int = 1, day: float = 5,
                   reason: str = "rejected: bad_timing", kind: str = "recycle") -> Record:
    body = {"kind": kind, "lead_id": LEAD, "cycle": cycle, "reason": reason,
            "trigger": "sa-9", "occurred_at": at(day).isoformat()}
    return Record(TOPICS.recycle, 4, offset, LEAD.encode(), orjson.dumps(body))


class Store:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def process(self, q: Qualifier, records: Sequence[Record]
                ) -> tuple[list[Output], Mapping[bytes, bytes | None]]:
        result = q.process(records, NOW, self.data.get)
        for key, value in result.writes:
            assert value is not None
            self.data[key] = value
        return result.outputs, dict(result.writes)


def by_topic(outputs: Sequence[Output], topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(o.value) for o in outputs if o.topic == topic]


def qualified(store: Store, q: Qualifier) -> None:
    outputs, _ = store.process(q, [profile_record(0), touch_record(1, "demo_request", 0)])
    assert [t["event_id"] for t in by_topic(outputs, TOPICS.transitions)] == ["L-1:c1:sql"]


def test_qualifier_emits_lead_recycled_and_writes_state() -> None:
    q, store = qualifier(), Store()
    qualified(store, q)
    outputs, writes = store.process(q, [recycle_record(2)])
    assert [(o.topic, o.key) for o in outputs] == [(TOPICS.transitions, LEAD.encode())]
    [body] = by_topic(outputs, TOPICS.transitions)
    t = Transition.model_validate(body)
    assert (t.event_id, t.type, t.cycle, t.from_stage, t.to_stage, t.triggered_by) == (
        "L-1:c1:recycled", "lead.recycled", 1, Stage.SQL, Stage.NEW, "sa-9")
    assert t.criteria == {"recycled_because": "rejected: bad_timing"}
    assert t.occurred_at == at(5)
    assert (t.router_version, t.rules_version, t.emitted_at) == (VERSION, RULES.version, NOW)
    value = writes[LEAD.encode()]
    assert value is not None
    state = LeadState.from_bytes(value)
    assert (state.cycle, state.stage, state.cycle_start) == (2, Stage.NEW, at(5).timestamp())
    assert state.profile is not None


def test_qualifier_ignores_a_repeated_recycle_record() -> None:
    q, store = qualifier(), Store()
    qualified(store, q)
    store.process(q, [recycle_record(2)])
    before = store.data[LEAD.encode()]
    outputs, _ = store.process(q, [recycle_record(3)])
    assert outputs == []
    assert store.data[LEAD.encode()] == before


def test_qualifier_requalifies_in_cycle_2_and_routes_it() -> None:
    q, store = qualifier(), Store()
    qualified(store, q)
    store.process(q, [recycle_record(2, day=5)])
    outputs, _ = store.process(q, [touch_record(3, "demo_request", 4),  # the old cycle's
                                   touch_record(4, "page_view", 6),
                                   touch_record(5, "chat_talk_to_sales", 7)])
    transitions = by_topic(outputs, TOPICS.transitions)
    assert [(t["event_id"], t["from_stage"], t["path"], t["cycle"]) for t in transitions] == [
        ("L-1:c2:sql", "new", "direct", 2)]
    [routing] = by_topic(outputs, TOPICS.routing)
    assert routing["kind"] == "route"
    req = RouteRequest.from_json(routing)
    assert (req.lead_id, req.cycle, req.sla_class, req.sql_event_id, req.country) == (
        LEAD, 2, SlaClass.HIGH_INTENT, "L-1:c2:sql", "DE")


def test_a_recycle_and_touchpoints_in_one_batch_apply_in_offset_order() -> None:
    q, store = qualifier(), Store()
    qualified(store, q)
    outputs, writes = store.process(q, [recycle_record(2, day=5),
                                        touch_record(3, "page_view", 6),
                                        touch_record(4, "pricing_page_view", 6.5)])
    assert [t["event_id"] for t in by_topic(outputs, TOPICS.transitions)] == [
        "L-1:c1:recycled", "L-1:c2:mql"]
    assert list(writes) == [LEAD.encode()]  # one state write per lead per batch


def test_a_replayed_batch_after_the_recycle_emits_nothing_new() -> None:
    q, store = qualifier(), Store()
    qualified(store, q)
    late = [touch_record(2, "page_view", 6), touch_record(3, "calendar_booked", 6.5)]
    assert by_topic(store.process(q, late)[0], TOPICS.transitions) == []
    outputs, _ = store.process(q, [recycle_record(4, day=5)])
    assert [t["event_id"] for t in by_topic(outputs, TOPICS.transitions)] == [
        "L-1:c1:recycled"]
    outputs, _ = store.process(q, late)  # redelivered after a crash
    assert outputs == []
    assert LeadState.from_bytes(store.data[LEAD.encode()]).stage is Stage.NEW


def test_an_unreadable_recycle_record_is_dead_lettered() -> None:
    q, store = qualifier(), Store()
    qualified(store, q)
    outputs, writes = store.process(q, [recycle_record(2, kind="mystery")])
    [letter] = by_topic(outputs, TOPICS.deadletter)
    DeadLetter.model_validate(letter)
    assert letter["reason"] == "internal_error"
    assert (letter["source_topic"], letter["offset"]) == (TOPICS.recycle, 2)
    assert writes == {}
    assert LeadState.from_bytes(store.data[LEAD.encode()]).stage is Stage.SQL


def test_rejection_in_routing_recycles_the_lead_in_the_qualifier() -> None:
    """The record the routing stage emits is the one the qualifier reads."""
    from router.domain.events import Rep
    from router.service.leads_stage import forward_activity
    from router.service.routing_stage import RoutingStage

    q, store = qualifier(), Store()
    outputs, _ = store.process(q, [profile_record(0), touch_record(1, "demo_request", 0)])
    [route] = [o for o in outputs if o.topic == TOPICS.routing]
    reps = {"A": Rep.model_validate({"rep_id": "A", "pools": ["global"]})}
    stage = RoutingStage(RULES, TOPICS, VERSION, reps, {})
    stage.process([Record(TOPICS.routing, 0, 0, route.key, route.value)], at(0), dict)
    activity = {"event_id": "sa-9", "lead_id": LEAD, "rep_id": "A", "type": "rejected",
                "reason": "wrong_role", "occurred_at": at(0.5).isoformat()}
    forwarded = forward_activity(Record(TOPICS.activity, 4, 7, LEAD.encode(),
                                        orjson.dumps(activity)), RULES, TOPICS, at(1), VERSION)
    result = stage.process([Record(TOPICS.routing, 0, 1, forwarded.key, forwarded.value)],
                           at(1), dict)
    [out] = [o for o in result.outputs if o.topic == TOPICS.recycle]
    record = Record(out.topic, 4, 3, out.key, out.value)
    outputs, _ = store.process(q, [record])
    [t] = by_topic(outputs, TOPICS.transitions)
    assert (t["event_id"], t["from_stage"], t["triggered_by"], t["occurred_at"]) == (
        "L-1:c1:recycled", "sql", "sa-9", "2026-11-02T21:00:00.000Z")
    assert t["criteria"] == {"recycled_because": "rejected: wrong_role"}
