"""`leadrouter simulate` on the hand-worked history (tests/unit/tools_fixtures.py)."""

from __future__ import annotations

from typing import Any

from router.domain.rules import load_rules
from router.tools.history import ACTIVITY, TimeRange
from router.tools.simulate import render_text, simulate
from tests.unit import tools_fixtures as fx
from tests.unit.test_replay import STRICT

DEFAULT = load_rules()


def run(h: fx.History) -> dict[str, Any]:
    return simulate(h, DEFAULT, STRICT, TimeRange(None, None)).summary


def test_side_by_side_figures_match_the_hand_count() -> None:
    s = run(fx.history())
    b, c = s["baseline"], s["candidate"]
    assert (b["mql"], b["sql"], b["sql_by_path"]) == (2, 2, {"direct": 1, "standard": 1})
    assert (c["mql"], c["sql"], c["sql_by_path"]) == (2, 1, {"direct": 1})
    assert (b["mql_to_sql_rate"], c["mql_to_sql_rate"]) == (0.5, 0.0)
    assert b["sla_class_mix"] == {"high_intent": 1, "behavioural": 1}
    # R-01 (capacity 1) takes L2 at minute 5, sales reject it at 20, so L1 at 30 finds it free
    assert b["assigned_by_pool"] == {"NA": 2} and b["assigned_by_rep"] == {"R-01": 2}
    assert b["peak_open_by_rep"] == {"R-01": {"peak_open": 1, "max_open_leads": 1}}
    assert b["reps_at_capacity"] == ["R-01"]
    assert (b["queued"], c["queued"]) == (0, 0)
    assert c["assigned_by_pool"] == {"NA": 1}
    assert s["changed"] == 1
    assert s["changed_by_direction"] == {"sql_added": 0, "sql_dropped": 1, "other": 0}
    [lead] = s["changed_leads"]
    assert (lead["lead_id"], lead["baseline_stage"], lead["candidate_stage"]) == (
        "L1", "sql", "mql")
    assert lead["why"][0].startswith("sql_authority now fails")
    assert lead["sales_judgement"] == "accepted"
    assert s["sales_evidence"]["sql_dropped"] == {
        "leads": 1, "accepted": 1, "converted": 0, "rejected": 0, "rejected_by_reason": {},
        "disqualified": 0, "released": 0, "no_verdict": 0}
    assert "L1: sql -> mql (accepted): sql_authority now fails" in render_text(s)


def test_a_lead_that_finds_the_rep_full_queues_until_the_history_frees_the_slot() -> None:
    h = fx.history()
    late = [fx.activity("L2", "first_touch", 8), fx.activity("L2", "rejected", 40, "no_fit"),
            fx.activity("L1", "accepted", 90)]
    from datetime import datetime

    h.records[ACTIVITY] = [fx.record(ACTIVITY, i, a, a["lead_id"],
                                     datetime.fromisoformat(a["occurred_at"]))
                           for i, a in enumerate(late)]
    b = run(h)["baseline"]
    assert b["queued"] == 1 and b["queued_leads"] == ["L1"]  # L2 still held at minute 30
    assert b["queue_seconds_p50"] == 600.0  # freed at minute 40
    assert b["assigned_by_rep"] == {"R-01": 2} and b["still_queued"] == 0
