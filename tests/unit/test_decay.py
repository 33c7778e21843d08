"""MQL decay (SPEC §2.2): an MQL with no engagement for the whole window, and no SQL, is
recycled with reason `decayed` and returns to nurture; decided from the state and a clock
passed in, once per cycle, with the cycle's deterministic `recycled` id."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.adapters.topics import Topics
from router.domain.decay import apply_decay, decay_deadline, decay_due
from router.domain.events import LeadProfile, Stage, Touchpoint, Transition
from router.domain.lead_state import LeadState
from router.domain.qualification import Context, apply_profile, apply_touchpoint
from router.domain.rules import Rules, RulesError, load_rules, parse_rules
from router.records import Record
from router.service.decay_index import DecayIndex
from router.service.inspection import qualification_part, render_lead
from router.service.qualifier import Qualifier

RULES = load_rules()
TOPICS = Topics.with_prefix("")
LEAD = "L-7"
T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
DAY = 86400.0


def at(day: float) -> datetime:
    return T0 + timedelta(days=day)


def ctx(rules: Rules = RULES, now: datetime | None = None) -> Context:
    return Context(rules=rules, router_version="test-decay", emitted_at=now or at(100))


def profile(day: float = 0, seniority: str = "manager", role: str = "influencer") -> LeadProfile:
    return LeadProfile.model_validate({
        "lead_id": LEAD, "updated_at": at(day).isoformat(), "seniority": seniority,
        "buying_role": role, "country": "DE",
        "company": {"domain": "acme.io", "employees": 420, "industry": "saas"}})


def tp(kind: str, day: float) -> Touchpoint:
    return Touchpoint.model_validate({"event_id": f"{kind}-{day:g}", "lead_id": LEAD,
                                      "type": kind, "occurred_at": at(day).isoformat()})


def feed(state: LeadState, events: Iterable[Touchpoint | LeadProfile],
         rules: Rules = RULES) -> list[Transition]:
    out: list[Transition] = []
    for e in events:
        out += (apply_touchpoint(state, e, ctx(rules)) if isinstance(e, Touchpoint)
                else apply_profile(state, e, ctx(rules)))
    return out


def mql_lead(rules: Rules = RULES, last_touch_day: float = 1) -> LeadState:
    """Manager/influencer: MQL authority, never SQL authority, so it stays an MQL."""
    state = LeadState(LEAD)
    out = feed(state, [profile(), tp("page_view", 0), tp("pricing_page_view", last_touch_day)],
               rules)
    assert [t.type for t in out] == ["lead.mql"] and state.stage is Stage.MQL
    return state


def rules_with(decay: str) -> Rules:
    return parse_rules(f"decay: {decay}\n", "test-rules.yaml")


# --------------------------------------------------------------------------------------------
# the deadline
# --------------------------------------------------------------------------------------------


def test_the_deadline_is_the_newest_touch_plus_the_engagement_window_by_default() -> None:
    state = mql_lead(last_touch_day=1)
    assert RULES.decay_seconds == RULES.windows.engagement_days * DAY
    assert decay_deadline(state, RULES) == at(1).timestamp() + RULES.window_seconds
    # every touch moves it: engagement of any kind keeps the MQL
    feed(state, [tp("email_open", 12)])
    assert decay_deadline(state, RULES) == at(12).timestamp() + RULES.window_seconds


def test_a_late_profile_gives_the_mql_a_whole_window_from_the_mql() -> None:
    state = LeadState(LEAD)
    feed(state, [tp("page_view", 0), tp("pricing_page_view", 1)])
    assert state.stage is Stage.NEW  # no profile yet: no fit, no authority
    feed(state, [profile(day=20)])
    assert state.stage is Stage.MQL
    assert decay_deadline(state, RULES) == at(20).timestamp() + RULES.window_seconds


@pytest.mark.parametrize(("decay", "seconds"), [
    ("{mql_after_days: 2}", 2 * DAY),
    ("{mql_after_days: 0.0001}", 8.64),
    ("{enabled: false}", None),
    ("{enabled: false, mql_after_days: 3}", None),
    ("{}", 30 * DAY),
])
def test_the_window_is_configurable(decay: str, seconds: float | None) -> None:
    rules = rules_with(decay)
    assert rules.decay_seconds == pytest.approx(seconds) if seconds else rules.decay_seconds is None
    state = mql_lead(rules)
    expected = None if seconds is None else at(1).timestamp() + seconds
    assert decay_deadline(state, rules) == pytest.approx(expected) if expected else \
        decay_deadline(state, rules) is None


@pytest.mark.parametrize(("decay", "field"), [
    ("{mql_after_days: 0}", "decay.mql_after_days"),
    ("{mql_after_days: 400}", "decay.mql_after_days"),
    ("{after: 3}", "decay.after"),
])
def test_a_bad_decay_setting_names_the_line_and_field(decay: str, field: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(f"name: x\ndecay: {decay}\n", "r.yaml")
    assert f"r.yaml:2: {field}:" in str(caught.value)


@pytest.mark.parametrize("stage", ["new", "sql"])
def test_only_an_mql_can_decay(stage: str) -> None:
    state = LeadState(LEAD)
    if stage == "new":
        feed(state, [profile(), tp("page_view", 0)])
    else:  # director/decision maker with a demo request: SQL at once (direct)
        feed(state, [profile(seniority="director", role="decision_maker"),
                     tp("demo_request", 0)])
    assert state.stage.value == stage
    assert decay_deadline(state, RULES) is None
    assert apply_decay(state, 1, at(400), ctx()) == []


# --------------------------------------------------------------------------------------------
# apply_decay
# --------------------------------------------------------------------------------------------


def test_decay_emits_lead_recycled_with_reason_decayed_and_returns_to_nurture() -> None:
    state = mql_lead(last_touch_day=1)
    deadline = at(1) + timedelta(days=30)
    assert apply_decay(state, 1, deadline - timedelta(seconds=1), ctx()) == []
    assert state.stage is Stage.MQL
    [event] = apply_decay(state, 1, deadline + timedelta(hours=3), ctx())
    assert event.model_dump(mode="json", exclude={"score", "emitted_at", "rules_version",
                                                   "router_version"}) == {
        "event_id": f"{LEAD}:c1:recycled",
        "type": "lead.recycled",
        "lead_id": LEAD,
        "cycle": 1,
        "from_stage": "mql",
        "to_stage": "new",
        "path": None,
        "triggered_by": "decay@2026-11-01T09:00:00.000Z",
        "occurred_at": "2026-11-01T09:00:00.000Z",  # the deadline, whatever as_of was
        "criteria": {"recycled_because": "decayed", "decay": {
            "last_engagement_at": "2026-10-02T09:00:00.000Z",
            "mql_at": "2026-10-02T09:00:00.000Z", "window_days": 30}},
        "handover": None,
    }
    assert (state.cycle, state.stage, state.mql_at) == (2, Stage.NEW, None)
    assert decay_deadline(state, RULES) is None


def test_decay_fires_once_and_a_repeat_or_stale_record_changes_nothing() -> None:
    state = mql_lead()
    late = at(200)
    assert len(apply_decay(state, 1, late, ctx())) == 1
    before = state.to_bytes()
    assert apply_decay(state, 1, late, ctx()) == []  # the same record again
    assert apply_decay(state, 2, late, ctx()) == []  # cycle 2 is new, not an MQL
    assert state.to_bytes() == before


def test_after_decay_only_new_engagement_qualifies_again_in_the_next_cycle() -> None:
    state = mql_lead(last_touch_day=1)
    apply_decay(state, 1, at(40), ctx())
    # a late arrival dated before the decay belongs to the old cycle
    assert feed(state, [tp("email_click", 20)]) == []
    out = feed(state, [tp("page_view", 41), tp("pricing_page_view", 42)])
    assert [(t.event_id, t.type) for t in out] == [(f"{LEAD}:c2:mql", "lead.mql")]
    assert decay_deadline(state, RULES) == at(42).timestamp() + RULES.window_seconds
    [again] = apply_decay(state, 2, at(80), ctx())
    assert again.event_id == f"{LEAD}:c2:recycled"


def test_the_state_keeps_the_mql_time_across_a_restart() -> None:
    state = mql_lead()
    restored = LeadState.from_bytes(state.to_bytes())
    assert restored.mql_at == state.mql_at == at(1).timestamp()
    old_format = orjson.loads(state.to_bytes())
    del old_format["ma"]  # a state written before decay existed
    assert LeadState.from_bytes(orjson.dumps(old_format)).mql_at is None
    assert decay_deadline(LeadState.from_bytes(orjson.dumps(old_format)), RULES) == \
        decay_deadline(state, RULES)


@settings(max_examples=200, deadline=None)
@given(touch_days=st.lists(st.floats(0, 60, allow_nan=False), min_size=0, max_size=8),
       profile_day=st.floats(0, 60, allow_nan=False),
       look_after=st.integers(-5 * 3600, 5 * 3600),  # seconds from the expected deadline
       window_days=st.sampled_from([1, 7, 30]))
def test_decay_fires_iff_the_window_since_the_last_engagement_or_mql_has_passed(
        touch_days: list[float], profile_day: float, look_after: int, window_days: int
) -> None:
    rules = rules_with(f"{{mql_after_days: {window_days}}}")
    state = LeadState(LEAD)
    events: list[Touchpoint | LeadProfile] = [
        tp("pricing_page_view" if i % 2 else "page_view", d) for i, d in enumerate(touch_days)]
    events.append(profile(profile_day))
    feed(state, sorted(events, key=lambda e: e.occurred_at if isinstance(e, Touchpoint)
                       else e.updated_at), rules)
    if state.stage is not Stage.MQL:
        assert decay_deadline(state, rules) is None
        return
    assert state.newest_ts is not None and state.mql_at is not None
    expected = max(state.newest_ts, state.mql_at) + window_days * DAY
    as_of = datetime.fromtimestamp(expected + look_after, UTC)
    due = look_after >= 0
    assert decay_due(state, as_of, rules) is due
    first = apply_decay(state, 1, as_of, ctx(rules))
    assert len(first) == (1 if due else 0)
    assert apply_decay(state, 1, as_of, ctx(rules)) == []  # never twice
    if due:
        assert first[0].occurred_at.timestamp() == pytest.approx(expected)
        assert state.cycle == 2


# --------------------------------------------------------------------------------------------
# the deadline index
# --------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "take"]), st.integers(0, 9),
                          st.one_of(st.none(), st.integers(0, 100)), st.integers(0, 2)),
                max_size=60))
def test_the_index_returns_exactly_the_due_leads_of_owned_partitions(
        ops: list[tuple[str, int, int | None, int]]) -> None:
    index = DecayIndex()
    model: dict[bytes, tuple[float, int]] = {}
    owned = {0, 1}
    for op, lead, value, partition in ops:
        key = f"L-{lead}".encode()
        if op == "set":
            deadline = None if value is None else float(value)
            index.set(key, partition, deadline, 1)
            if deadline is None:
                model.pop(key, None)
            else:
                model[key] = (deadline, partition)
        else:
            now = float(value or 0)
            got = index.take_due(now, owned, limit=1000, retry_after=1000.0)
            expected = {k for k, (d, p) in model.items() if d <= now and p in owned}
            assert {k for k, _p, _c in got} == expected
            for k in list(model):
                d, p = model[k]
                if p not in owned and d <= now:
                    del model[k]  # dropped: another worker's now
                elif k in expected:
                    model[k] = (now + 1000.0, p)  # asked again later unless applied
    assert len(index) == len(model)


def test_the_index_heap_stays_proportional_to_the_mqls_held() -> None:
    index = DecayIndex()
    for deadline in range(50_000):  # one lead whose deadline moves on every touch
        index.set(b"L-1", 0, float(deadline), 1)
    assert len(index) == 1 and len(index._heap) <= 2 + 1024 + 1


# --------------------------------------------------------------------------------------------
# the Qualifier: decay records through the usual batch path
# --------------------------------------------------------------------------------------------


def touch_record(offset: int, kind: str, day: float, partition: int = 3) -> Record:
    value = {"event_id": f"{kind}-{day:g}", "lead_id": LEAD, "type": kind,
             "occurred_at": at(day).isoformat()}
    return Record(TOPICS.touchpoints, partition, offset, LEAD.encode(), orjson.dumps(value))


def profile_record(offset: int, partition: int = 3) -> Record:
    value = profile().model_dump(mode="json")
    return Record(TOPICS.profiles, partition, offset, LEAD.encode(), orjson.dumps(value))


class Store:
    """The table: what the worker writes after the outputs are acknowledged."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def load(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def write(self, writes: list[tuple[bytes, bytes | None]]) -> None:
        self.data.update({k: v for k, v in writes if v is not None})


def run(q: Qualifier, store: Store, records: list[Record], now: datetime) -> Any:
    result = q.process(records, now, store.load)
    store.write(result.writes)
    return result


def test_the_qualifier_sends_itself_a_decay_record_and_applies_it_once() -> None:
    q = Qualifier(RULES, TOPICS, "test-decay", lambda _d: False)
    store = Store()
    run(q, store, [profile_record(0), touch_record(1, "page_view", 0),
                   touch_record(2, "pricing_page_view", 1)], at(1))
    deadline = at(31)
    assert q.decay_index.get(LEAD.encode()) == (deadline.timestamp(), 3, 1)
    assert q.decay_records(deadline - timedelta(seconds=1), {3}) == []
    assert q.decay_records(deadline, {0, 1}) == []  # another worker's partition now
    # owned again (the index was refilled from the stored state after a rebalance)
    assert q.index_partition(3, store.data.items()) == 1
    [record] = q.decay_records(deadline, {3})
    assert (record.topic, record.key, record.partition) == (TOPICS.recycle, LEAD.encode(), 3)
    command = orjson.loads(record.value)
    assert command == {"kind": "decay", "lead_id": LEAD, "cycle": 1,
                       "as_of": deadline.isoformat()}
    # nothing applied yet: asked again only after the retry delay
    assert q.decay_records(deadline + timedelta(seconds=5), {3}) == []
    assert len(q.decay_records(deadline + timedelta(seconds=31), {3})) == 1
    as_record = Record(TOPICS.recycle, 3, 0, record.key, record.value)
    result = run(q, store, [as_record], deadline + timedelta(seconds=32))
    [out] = result.outputs
    assert out.topic == TOPICS.transitions
    event = orjson.loads(out.value)
    assert (event["event_id"], event["criteria"]["recycled_because"]) == (
        f"{LEAD}:c1:recycled", "decayed")
    assert LeadState.from_bytes(store.data[LEAD.encode()]).stage is Stage.NEW
    assert q.decay_index.get(LEAD.encode()) is None
    assert q.decay_records(at(300), {3}) == []
    # the retried record arrives too (or the batch is replayed after a crash): nothing new
    again = run(q, store, [Record(TOPICS.recycle, 3, 1, record.key, record.value)], at(300))
    assert again.outputs == [] and again.transitions == []


def test_a_touch_before_the_decay_record_is_applied_keeps_the_mql() -> None:
    q = Qualifier(RULES, TOPICS, "test-decay", lambda _d: False)
    store = Store()
    run(q, store, [profile_record(0), touch_record(1, "page_view", 0),
                   touch_record(2, "pricing_page_view", 1)], at(1))
    [record] = q.decay_records(at(31), {3})
    # the lead engaged just before the deadline; that touch is processed first
    result = run(q, store, [touch_record(3, "email_click", 30.9),
                            Record(TOPICS.recycle, 3, 0, record.key, record.value)], at(31))
    assert result.transitions == []
    assert LeadState.from_bytes(store.data[LEAD.encode()]).stage is Stage.MQL
    assert q.decay_index.get(LEAD.encode()) == (at(60.9).timestamp(), 3, 1)


def test_the_lead_view_shows_the_pending_decay_and_then_the_decayed_cycle() -> None:
    state = mql_lead(last_touch_day=1)
    view = qualification_part(state, RULES, lambda _d: False)
    assert view["decay"] == {"state": "pending", "due_at": "2026-11-01T09:00:00.000Z",
                             "window_days": 30}
    text = render_lead({"lead_id": LEAD, "qualification": view, "routing": None})
    assert "decay: back to nurture at 2026-11-01T09:00:00.000Z unless it engages" in text
    apply_decay(state, 1, at(40), ctx())
    view = qualification_part(state, RULES, lambda _d: False)
    assert view["decay"] == {"state": "decayed", "cycle": 1, "at": "2026-11-01T09:00:00.000Z"}
    text = render_lead({"lead_id": LEAD, "qualification": view, "routing": None})
    assert "decayed: cycle 1 went back to nurture at 2026-11-01T09:00:00.000Z" in text


# --------------------------------------------------------------------------------------------
# the verifier's decay check
# --------------------------------------------------------------------------------------------


def verify_decay(transitions: list[dict[str, Any]], touch_days: list[float], now: datetime
                 ) -> list[str]:
    from router.tools.history import HistoryRecord
    from router.tools.verify import Report, check_decay

    records = [HistoryRecord(TOPICS.touchpoints, 0, i, at(d).timestamp(), LEAD.encode(),
                             orjson.dumps({"event_id": f"t{i}", "lead_id": LEAD,
                                           "type": "page_view",
                                           "occurred_at": at(d).isoformat()}))
               for i, d in enumerate(touch_days)]
    report = Report()
    check_decay(report, RULES, records, set(), transitions, now.timestamp())
    return report.violations


def transition(kind: str, day: float, cycle: int = 1, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"{LEAD}:c{cycle}:{kind}", "type": f"lead.{kind}", "lead_id": LEAD,
            "cycle": cycle, "occurred_at": at(day).isoformat(),
            "emitted_at": at(day).isoformat(), "criteria": {}, **extra}


def test_the_verifier_accepts_a_right_decay_and_flags_wrong_or_missing_ones() -> None:
    mql = transition("mql", 1)
    decayed = transition("recycled", 31, criteria={"recycled_because": "decayed"})
    assert verify_decay([mql, decayed], [0, 1], at(40)) == []
    # engaged on day 20: the decay on day 31 was wrong
    [wrong] = verify_decay([mql, decayed], [0, 1, 20], at(40))
    assert "although it engaged" in wrong
    # an SQL cannot decay
    sql = transition("sql", 2)
    assert any("not an MQL" in v for v in verify_decay([mql, sql, decayed], [0, 1], at(40)))
    # still an MQL on day 40 with nothing since day 1: it should have decayed
    [missing] = verify_decay([mql], [0, 1], at(40))
    assert "should have decayed" in missing
    assert verify_decay([mql], [0, 1], at(30)) == []  # not yet due
