"""The verifier's checks can fail: each one is fed a run that breaks its invariant, and a
clean counterpart that must pass."""

from __future__ import annotations

from typing import Any

import orjson

from router.domain.events import Rep
from router.tools.history import HistoryRecord
from router.tools.verify import Report, _dedupe, check_dead_letters, check_routing

T0 = 1_800_000_000.0


def iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()


def assigned(lead: str, rep: str, at: float, seq: int = 1, rule: str = "round_robin",
             kind: str = "lead.assigned", due: float | None = None) -> dict[str, Any]:
    return {"event_id": f"{lead}:c1:assign:{seq}", "type": kind, "lead_id": lead, "cycle": 1,
            "rep_id": rep, "rule": rule, "emitted_at": iso(at),
            "sla": {"class": "high_intent", "due_at": iso(due if due is not None else at + 300)}}


def sql(lead: str) -> dict[str, Any]:
    return {"event_id": f"{lead}:c1:sql", "type": "lead.sql", "lead_id": lead, "cycle": 1}


ROSTER = {"A": Rep(rep_id="A", max_open_leads=1), "B": Rep(rep_id="B", max_open_leads=1)}


def run(transitions: list[dict[str, Any]], assignments: list[dict[str, Any]],
        activity: list[dict[str, Any]] | None = None, sla: list[dict[str, Any]] | None = None,
        now: float = T0 + 10) -> list[str]:
    report = Report()
    check_routing(report, ROSTER, transitions, assignments, activity or [], sla or [], now)
    return report.violations


def test_a_rep_over_capacity_through_round_robin_is_a_violation() -> None:
    got = run([sql("L1"), sql("L2")], [assigned("L1", "A", T0), assigned("L2", "A", T0 + 1)])
    assert got == ["L2:c1:assign:1: A at 2/1 open (L1, L2)"]


def test_a_slot_freed_by_accept_or_by_a_hand_over_in_the_same_batch_is_not() -> None:
    accepted = {"type": "accepted", "lead_id": "L1", "rep_id": "A", "_ts": T0 + 0.5}
    assert run([sql("L1"), sql("L2")], [assigned("L1", "A", T0), assigned("L2", "A", T0 + 1)],
               [accepted]) == []
    # one tick: L1 handed from A to B, and L2 given to A, emitted in either order
    batch = [assigned("L2", "A", T0 + 5, rule="reassign_after_breach",
                      kind="lead.reassigned", seq=2),
             assigned("L1", "B", T0 + 5, rule="reassign_after_breach", kind="lead.reassigned",
                      seq=2)]
    assert run([sql("L1"), sql("L2")],
               [assigned("L1", "A", T0), assigned("L2", "B", T0 + 1), *batch]) == []


def test_named_account_owners_may_go_over_capacity() -> None:
    assert run([sql("L1"), sql("L2")],
               [assigned("L1", "A", T0), assigned("L2", "A", T0 + 1, rule="named_account")]) == []


def test_an_sql_never_routed_and_two_first_assignments_are_violations() -> None:
    got = run([sql("L1"), sql("L2")],
              [assigned("L1", "A", T0),
               {**assigned("L1", "B", T0 + 1), "event_id": "L1:c1:assign:9"}])
    assert "L2 cycle 1: lead.sql was never assigned or queued" in got
    assert "L1 cycle 1: 2 lead.assigned" in got


def test_a_passed_deadline_needs_an_sla_outcome_unless_sales_closed_it_first() -> None:
    late = assigned("L1", "A", T0, due=T0 + 60)
    assert run([sql("L1")], [late], now=T0 + 100) == [
        f"L1:c1:assign:1: deadline {iso(T0 + 60)} passed without sla.met or sla.breached"]
    breached = {"event_id": "L1:c1:sla:1:breached", "type": "sla.breached", "lead_id": "L1",
                "cycle": 1}
    assert run([sql("L1")], [late], sla=[breached], now=T0 + 100) == []
    touched = {"type": "first_touch", "lead_id": "L1", "rep_id": "A", "_ts": T0 + 30}
    assert run([sql("L1")], [late], [touched], now=T0 + 100) == []
    assert run([sql("L1")], [late], now=T0 + 61) == []  # within the grace period


def test_a_breach_while_queued_covers_the_assignment_that_keeps_its_deadline() -> None:
    """Seen in the Tansu kill loop: queued at T0 (clock 0, due T0 + 15), breached while queued,
    assigned at T0 + 30 with the same deadline; the outcome carries clock 0, not 1."""
    queued = assigned("L1", "", T0, seq=0, kind="lead.queued", due=T0 + 15)
    queued["event_id"] = "L1:c1:queued"
    late = assigned("L1", "A", T0 + 30, due=T0 + 15)
    breached = {"event_id": "L1:c1:sla:0:breached", "type": "sla.breached", "lead_id": "L1",
                "cycle": 1, "due_at": iso(T0 + 15)}
    assert run([sql("L1")], [queued, late], sla=[breached], now=T0 + 100) == []
    other = {**breached, "due_at": iso(T0 + 16)}  # a breach of another deadline does not count
    assert run([sql("L1")], [queued, late], sla=[other], now=T0 + 100) == [
        f"L1:c1:assign:1: deadline {iso(T0 + 15)} passed without sla.met or sla.breached"]


def record(value: dict[str, Any], offset: int) -> HistoryRecord:
    return HistoryRecord("t", 0, offset, 1_800_000_000.0, b"k", orjson.dumps(value))


def test_a_repeated_event_id_with_another_decision_is_a_violation() -> None:
    report = Report()
    first = assigned("L1", "A", T0)
    events = _dedupe(report, "assignments", [record(first, 0), record(first, 1),
                                            record({**first, "rep_id": "B"}, 2)],
                     ("type", "rep_id"))
    assert len(events) == 1
    assert report.repeats["assignments"] == 2
    assert report.violations == [
        "assignments: L1:c1:assign:1 repeated with a different rep_id ('A' then 'B')"]


def test_a_dead_letter_must_name_an_existing_input_with_its_key() -> None:
    report = Report()
    inputs = {"leads.touchpoints": {(0, 5): b"L1"}}
    letters = [
        {"source_topic": "leads.touchpoints", "partition": 0, "offset": 5, "key": "L1"},
        {"source_topic": "leads.touchpoints", "partition": 0, "offset": 6, "key": "L1"},
        {"source_topic": "leads.touchpoints", "partition": 0, "offset": 5, "key": "L2"},
        {"source_topic": "nope", "partition": 0, "offset": 5, "key": "L1"},
    ]
    check_dead_letters(report, letters, inputs)
    assert report.violations == [
        "dead letter names leads.touchpoints[0]@6, which does not exist",
        "dead letter for leads.touchpoints@5: key differs",
        "dead letter names unknown topic nope",
    ]
