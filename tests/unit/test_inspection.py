"""Lead and rep inspection views (router.service.inspection): the numbers behind each
criterion, the holder and SLA state, queue positions, and the text `leadrouter lead show`
prints. Plain data in, plain data out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from router.domain.events import Rep, SlaClass
from router.domain.lead_state import LeadState
from router.domain.routing_state import Holding, Queued, RouteRequest, RoutingState
from router.domain.rules import load_rules
from router.service.inspection import (
    lead_view,
    qualification_part,
    render_lead,
    render_reps,
    rep_view,
    routing_part,
)
from tests.unit.builders import LEAD, profile, run, tp

RULES = load_rules()
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def part(events: list[Any], named: frozenset[str] = frozenset()) -> dict[str, Any]:
    state, _ = run(events)
    return qualification_part(state, RULES, named.__contains__)


def test_unknown_lead_says_so() -> None:
    view = lead_view("L-none", None, None)
    assert view["known"] is False
    assert "not seen by the router" in render_lead(view)


def test_mql_lead_shows_engagement_and_intent_numbers() -> None:
    q = part([profile(), tp("product_page_view", 0), tp("content_download", 1),
              tp("email_click", 2)])
    assert q["stage"] == "mql"
    assert q["cycle"] == 1
    engagement = q["criteria"]["engagement"]
    assert engagement["met"] is False
    assert engagement["summary"] == "engagement 3/4 in 30 days"
    assert engagement["touchpoints_in_window"] == 3
    intent = q["criteria"]["intent"]
    assert intent["met"] is False
    assert intent["summary"].startswith("intent: no talk-to-sales action yet; 0/2 pricing views")
    assert q["criteria"]["fit"]["met"] is True
    assert q["criteria"]["authority"]["met"] is True
    text = render_lead(lead_view(LEAD, q, None))
    assert "stage MQL" in text
    assert "- engagement engagement 3/4 in 30 days" in text
    assert "+ fit" in text
    assert "routing: not routed in this cycle" in text


def test_missing_fit_is_named_with_the_number() -> None:
    q = part([profile(employees=12), tp("webinar_attended", 0)])
    assert q["criteria"]["fit"]["met"] is False
    assert q["criteria"]["fit"]["summary"] == "employees 12 outside [50, 2000]"


def test_named_account_counts_as_fit() -> None:
    q = part([profile(employees=12, domain="bigco.com"), tp("webinar_attended", 0)],
             named=frozenset({"bigco.com"}))
    assert q["criteria"]["fit"]["met"] is True
    assert q["criteria"]["fit"]["summary"] == "named account bigco.com"


def test_last_events_are_newest_first_and_bounded() -> None:
    q = part([profile(), *[tp("email_click", d / 10, id=f"e{d}") for d in range(25)]])
    ids = [e["event_id"] for e in q["last_events"]]
    assert ids[0] == "e24"
    assert len(ids) == 10
    assert ids == sorted(ids, key=lambda i: -int(i[1:]))


def test_view_never_carries_the_leads_name_or_email() -> None:
    q = part([profile(email="ana.ruiz@acme.io", first_name="Ana", last_name="Ruiz"),
              tp("demo_request", 0)])
    raw = orjson.dumps(lead_view(LEAD, q, None)).decode()
    assert "ana.ruiz" not in raw
    assert "Ruiz" not in raw
    assert q["profile"]["company"]["domain"] == "acme.io"


def test_lead_state_round_trips_through_bytes_into_the_same_view() -> None:
    state, _ = run([profile(), tp("demo_request", 0)])
    again = LeadState.from_bytes(state.to_bytes())
    assert qualification_part(again, RULES, lambda _d: False) == \
        qualification_part(state, RULES, lambda _d: False)


def holding(lead: str = LEAD, **fields: Any) -> Holding:
    base: dict[str, Any] = dict(
        lead_id=lead, cycle=1, rep_id="R-1", pool="EMEA", rule="round_robin", seq=1,
        sla_class=SlaClass.HIGH_INTENT, started_at=NOW.timestamp(),
        due_at=(NOW + timedelta(minutes=5)).timestamp(),
        warn_at=(NOW + timedelta(minutes=4)).timestamp())
    base.update(fields)
    return Holding(**base)


def test_holder_and_running_clock() -> None:
    state = RoutingState()
    state.hold(holding())
    r = routing_part(LEAD, state)
    assert r is not None
    assert r["status"] == "assigned"
    assert r["rep_id"] == "R-1"
    assert r["sla"]["state"] == "running"
    assert r["sla"]["due_at"] == "2026-11-23T10:05:00.000Z"


def test_sla_states() -> None:
    cases = [
        (dict(warned=True), "warning"),
        (dict(breached=True, breached_by=("R-1",)), "breached"),
        (dict(first_touch_at=NOW.timestamp() + 60), "met"),
        (dict(first_touch_at=NOW.timestamp() + 900, breached=True), "met late"),
        (dict(open=False, ended_by="rejected"), "ended (rejected)"),
    ]
    for fields, expected in cases:
        state = RoutingState()
        state.hold(holding(**fields))
        r = routing_part(LEAD, state)
        assert r is not None
        assert r["sla"]["state"].startswith(expected), (fields, r["sla"]["state"])


def test_queued_lead_shows_its_position() -> None:
    state = RoutingState()
    for i, lead in enumerate(["L-a", LEAD, "L-c"]):
        state.queues.setdefault("EMEA", []).append(Queued(
            RouteRequest(lead_id=lead, cycle=1, sla_class=SlaClass.BEHAVIOURAL), "EMEA",
            queued_at=NOW.timestamp() + i, due_at=NOW.timestamp() + 3600))
    r = routing_part(LEAD, state)
    assert r is not None
    assert (r["status"], r["queue_position"], r["queue_length"]) == ("queued", 2, 3)
    assert routing_part("L-other", state) is None


def test_routing_from_an_earlier_cycle_is_not_the_current_holder() -> None:
    q = part([profile(), tp("demo_request", 0)])
    q["cycle"] = 2
    state = RoutingState()
    state.hold(holding(cycle=1, open=False, ended_by="rejected"))
    view = lead_view(LEAD, q, routing_part(LEAD, state))
    assert view["routing"] is None
    assert view["previous_cycle_routing"]["ended_by"] == "rejected"


def test_rep_view_counts_open_leads_and_out_of_office() -> None:
    roster = {
        "R-1": Rep.model_validate({"rep_id": "R-1", "pools": ["EMEA"], "max_open_leads": 3}),
        "R-2": Rep.model_validate({"rep_id": "R-2", "pools": ["EMEA"], "out_of_office": [
            {"start": (NOW - timedelta(days=1)).isoformat(),
             "end": (NOW + timedelta(days=1)).isoformat(), "backup_rep_id": "R-1"}]}),
    }
    state = RoutingState()
    state.hold(holding("L-1"))
    state.hold(holding("L-2"))
    state.hold(holding("L-gone", rep_id="R-old"))  # a rep who left the roster with a lead
    state.queues["EMEA"] = [Queued(
        RouteRequest(lead_id="L-q", cycle=1, sla_class=SlaClass.BEHAVIOURAL), "EMEA",
        queued_at=NOW.timestamp(), due_at=NOW.timestamp() + 60)]
    view = rep_view(roster, state, NOW)
    by_id = {r["rep_id"]: r for r in view["reps"]}
    assert by_id["R-1"]["open_leads"] == 2
    assert by_id["R-1"]["max_open_leads"] == 3
    assert by_id["R-2"]["out_of_office"]["backup_rep_id"] == "R-1"
    assert by_id["R-old"]["on_roster"] is False
    assert by_id["R-old"]["open_lead_ids"] == ["L-gone"]
    assert view["queues"]["EMEA"]["lead_ids"] == ["L-q"]
    text = render_reps(view)
    assert "2/3" in text
    assert "R-old (off roster)" in text
    assert "queue EMEA: 1 waiting" in text



def test_a_lead_found_off_its_partition_says_where_and_why() -> None:
    q = part([profile(), tp("webinar_attended", 0)])
    q["partitioning"] = {"murmur2_partition": 3, "found_on_partitions": [3, 7],
                         "note": "a producer uses another partitioner"}
    text = render_lead(lead_view(LEAD, q, None))
    assert "partitions: found on 3, 7, its key hashes (murmur2) to 3" in text
    assert "another partitioner" in text
    assert "partitions:" not in render_lead(lead_view(LEAD, part([profile()]), None))
