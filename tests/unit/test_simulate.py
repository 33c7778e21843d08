"""`leadrouter simulate` on the hand-worked history (tests/unit/tools_fixtures.py)."""

from __future__ import annotations

from router.domain.rules import load_rules
from router.tools.history import ACTIVITY, TimeRange
from router.tools.simulate import render_text, simulate
from tests.unit import tools_fixtures as fx
from tests.unit.tools_fixtures import simulate_strict

DEFAULT = load_rules()


def test_side_by_side_figures_match_the_hand_count() -> None:
    s = simulate_strict(fx.history())
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
    b = simulate_strict(h)["baseline"]
    assert b["queued"] == 1 and b["queued_leads"] == ["L1"]  # L2 still held at minute 30
    assert b["queue_seconds_p50"] == 600.0  # freed at minute 40
    assert b["assigned_by_rep"] == {"R-01": 2} and b["still_queued"] == 0


def test_a_rejection_from_a_rep_who_no_longer_holds_the_lead_does_not_recycle_it() -> None:
    """Found on the demo: R-03 rejected L-00253 after a breach had reassigned it to R-04; the
    router dead-lettered that as not_holder, the replay recycled the lead and counted a second
    SQL the topics do not have."""
    from router.tools.history import ASSIGNMENTS
    from tests.unit.tools_fixtures import assignment, out

    def sqls(h: fx.History) -> int:
        return int(simulate(h, DEFAULT, DEFAULT, TimeRange(None, None)).summary["baseline"]["sql"])

    def with_activity(h: fx.History) -> fx.History:
        acts = [fx.activity("L2", "rejected", 20, "no_fit", rep="R-01"),
                fx.activity("L2", "first_touch", 21, rep="R-02")]
        h.records[ACTIVITY] = [fx.record(ACTIVITY, i, a, "L2", fx.at(20 + i))
                               for i, a in enumerate(acts)]
        # L2 asks for a demo again after the rejection: a recycled lead would be SQL again
        h.records[fx.TOUCHPOINTS].append(fx.record(
            fx.TOUCHPOINTS, 99, fx.touch("L2", 9, "demo_request", 60), "L2", fx.at(60)))
        return h

    assert sqls(with_activity(fx.history())) == 3  # no assignments known: the rejection counts
    h = with_activity(fx.history())
    h.records[ASSIGNMENTS] = out(ASSIGNMENTS, [
        (5, assignment("assigned", "L2", "R-01", "NA", "high_intent")),
        (10, assignment("reassigned", "L2", "R-02", "NA", "high_intent", seq=2))])
    s = simulate(h, DEFAULT, DEFAULT, TimeRange(None, None)).summary
    assert s["baseline"]["sql"] == 2  # R-01 no longer held L2: no recycle, no second SQL
    assert any("did not hold the lead" in n and "(1 records)" in n for n in s["notes"])
