"""The replay core on a history worked out by hand (tests/unit/tools_fixtures.py)."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest

from router.domain.rules import Rules, load_rules
from router.tools.history import (
    ACTIVITY,
    PROFILES,
    TOUCHPOINTS,
    History,
    read_ndjson,
    write_ndjson,
)
from router.tools.replay import decode_records, explain, replay, replay_events
from tests.unit import tools_fixtures as fx
from tests.unit.tools_fixtures import STRICT

DEFAULT = load_rules()


def inputs(h: History) -> list[fx.HistoryRecord]:
    return [*h.topic(PROFILES), *h.topic(TOUCHPOINTS), *h.topic(ACTIVITY)]


def summary(result: object) -> list[tuple[str, str, str | None, int, str]]:
    from router.tools.replay import ReplayResult

    assert isinstance(result, ReplayResult)
    return [(d.lead_id, d.type, d.path, d.rules_index, d.triggered_by)
            for d in sorted(result.decisions, key=lambda d: (d.occurred_at, d.lead_id,
                                                             d.rules_index, d.type))]


def test_the_default_rules_give_the_stages_worked_out_by_hand() -> None:
    result = replay(inputs(fx.history()), [DEFAULT], [])
    assert summary(result) == [  # in event time: minutes 5, 10, 15, 20, 30
        ("L2", "lead.sql", "direct", 0, "tp-L2-1"),
        ("L1", "lead.mql", "standard", 0, "tp-L1-2"),
        ("L3", "lead.mql", "standard", 0, "tp-L3-2"),
        # sales rejected L2 at minute 20: back to nurture
        ("L2", "lead.recycled", None, 0, "sa-L2-rejected"),
        ("L1", "lead.sql", "standard", 0, "tp-L1-4"),  # the 4th touch (3 had too few)
    ]
    assert result.best == [{"L1": 2, "L2": 2, "L3": 1}]
    assert result.events == 5 + 10 + 1  # profiles, touchpoints, the one recycling activity
    sql = next(d for d in result.decisions if d.lead_id == "L1" and d.type == "lead.sql")
    assert sql.request is not None and sql.request.country == "US"
    assert sql.sla_class == "behavioural"


def test_two_rule_sets_in_lock_step_say_which_criterion_changed() -> None:
    result = replay(inputs(fx.history()), [DEFAULT, STRICT], [])
    assert result.best[0] == {"L1": 2, "L2": 2, "L3": 1}
    assert result.best[1] == {"L1": 1, "L2": 2, "L3": 1}  # L2 is a VP: still SQL
    why = result.why["L1"]
    assert len(why) == 1 and why[0].startswith("sql_authority now fails (director/decision_maker")
    assert "L2" not in result.why


def test_explain_names_only_the_criteria_that_differ() -> None:
    from router.domain.criteria import assess
    from router.domain.events import Touchpoint
    from router.domain.lead_state import LeadState

    state = LeadState("L1")
    state.profile = fx.profile("L1", "director", "decision_maker")
    from router.domain.lead_state import record_touchpoint

    record_touchpoint(state, Touchpoint.model_validate(fx.touch("L1", 1, "demo_request", 0)),
                      DEFAULT)
    a, b = assess(state, DEFAULT, lambda _d: False), assess(state, STRICT, lambda _d: False)
    assert explain(a, a) == []
    assert [w.split(" (")[0] for w in explain(a, b)] == ["sql_authority now fails"]
    # the lead is the same on both sides; with the rules, the reader sees what changed
    [why] = explain(a, b, (DEFAULT, STRICT))
    assert why == ("sql_authority now fails (director/decision_maker, needs seniority vp,"
                   " c_level; baseline: director/decision_maker, needs"
                   " seniority director, vp, c_level or role decision_maker)")


def test_refused_inputs_are_counted_by_reason_as_the_worker_would() -> None:
    bad = [fx.record(TOUCHPOINTS, 50, b'{"event_id": ', "L9", fx.T0),
           fx.record(TOUCHPOINTS, 51, fx.touch("L9", 1, "page_view", 60 * 24), "L9", fx.T0),
           fx.record(TOUCHPOINTS, 52, fx.touch("L9", 2, "page_view", 0), "L8", fx.T0)]
    result = replay(inputs(fx.history({TOUCHPOINTS: bad})), [DEFAULT], [])
    assert result.refused == [{"invalid_json": 1, "future_event": 1, "key_mismatch": 1}]
    # without the clock check the dated-tomorrow touch is accepted (the verifier's mode)
    events = decode_records(bad, [DEFAULT], future_check=False)
    assert [e[3].lead_id for e in events] == ["L9"]


def test_an_export_replays_to_the_same_decisions(tmp_path: Path) -> None:
    h = fx.history({TOUCHPOINTS: [fx.record(TOUCHPOINTS, 60, b"\xff\xfe", "L9", fx.T0)]})
    path = tmp_path / "history.ndjson"
    with path.open("wb") as f:
        assert write_ndjson(h, f, [PROFILES, TOUCHPOINTS, ACTIVITY]) == 5 + 11 + 4
    back = read_ndjson(path)
    assert back.topic(TOUCHPOINTS) == h.topic(TOUCHPOINTS)  # bytes kept exactly (base64)
    assert summary(replay(inputs(back), [DEFAULT], [])) == \
        summary(replay(inputs(h), [DEFAULT], []))


def test_a_file_that_is_not_an_export_is_refused_with_the_line(tmp_path: Path) -> None:
    import pytest

    from router.tools.history import HistoryError

    path = tmp_path / "h.ndjson"
    buf = io.BytesIO()
    write_ndjson(fx.history(), buf, [PROFILES])
    path.write_bytes(buf.getvalue() + b'{"topic": "leads.profiles"}\n')
    with pytest.raises(HistoryError, match=r"h.ndjson:7: not a history record"):
        read_ndjson(path)
    path.write_bytes(b'{"hello": 1}\n')
    with pytest.raises(HistoryError, match=r"h.ndjson:1: not a leadrouter history export"):
        read_ndjson(path)


def test_split_by_lead_across_processes_gives_the_same_result() -> None:
    # many copies of the fixture under other lead ids, so both processes have work
    h = fx.history()
    records = []
    for copy in range(40):
        for r in inputs(h):
            lead = r.key.decode() if r.key else ""
            value = (r.value or b"").replace(f'"{lead}"'.encode(), f'"{lead}-{copy}"'.encode())
            value = value.replace(f"-{lead}-".encode(), f"-{lead}-{copy}-".encode())
            records.append(fx.record(r.topic, r.offset, value, f"{lead}-{copy}",
                                     fx.T0 + timedelta(seconds=r.timestamp - fx.T0.timestamp())))
    serial = replay(records, [DEFAULT, STRICT], [], workers=1)
    parallel = replay(records, [DEFAULT, STRICT], [], workers=2, parallel_from=1)
    assert sorted(summary(serial)) == sorted(summary(parallel))
    assert serial.best == parallel.best and serial.why == parallel.why
    assert len([d for d in parallel.decisions if d.type == "lead.sql"]) == 40 * 2 + 40 * 1


def test_the_prune_shortcut_leaves_every_decision_as_the_full_filter_gives_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """_prune skips its filter when the oldest touch is still in the window (a replay speed-up);
    on a synthetic history long enough for windows to roll over, every decision and every
    final lead state is what the unconditional filter gives."""
    from datetime import UTC, datetime

    from router.domain import lead_state
    from router.tools.synth import write_history

    path = tmp_path / "h.ndjson"
    with path.open("wb") as f:
        write_history(f, 20_000, 1_500, 90, 3, datetime(2026, 6, 1, tzinfo=UTC))
    records = inputs(read_ndjson(path))

    def full_filter(state: lead_state.LeadState, rules: Rules) -> None:
        if state.newest_ts is None:
            return
        cut = state.newest_ts - rules.window_seconds
        state.recent = [t for t in state.recent if t[0] >= cut]
        state.pricing = [t for t in state.pricing if t[0] >= cut]
        if state.last_intent is not None and state.last_intent[0] < cut:
            state.last_intent = None
        if state.last_tts is not None and state.last_tts[0] < cut:
            state.last_tts = None

    def run() -> tuple[list[tuple[str, str, str | None, int, str]], dict[str, bytes]]:
        events = decode_records(records, [DEFAULT, STRICT])
        result = replay_events(events, [DEFAULT, STRICT], lambda _d: False, keep_states=True)
        states = {f"{i}:{lead}": s.to_bytes() for i, side in enumerate(result.states)
                  for lead, s in side.items()}
        return summary(result), states

    shortcut = run()
    monkeypatch.setattr(lead_state, "_prune", full_filter)
    reference = run()
    assert len(shortcut[0]) > 500  # enough decisions to mean something
    assert shortcut == reference
