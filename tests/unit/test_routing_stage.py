"""The routing stage end to end over plain records: route, activity and tick in, Assignment
JSON, dead letters and state writes out (no Kafka)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from router.domain.events import Assignment, DeadLetter, NamedAccount, Rep, SlaClass, SlaEvent
from router.domain.routing_state import RouteRequest
from router.domain.rules import load_rules
from router.records import Record
from router.service.leads_stage import forward_activity
from router.service.routing_stage import APPLIED, OFFSET_KEY, RoutingStage, applied_copy, tick
from tests.unit.builders import NOW, TOPICS, activity, activity_input

RULES = load_rules()
VERSION = "test-1"


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def rep(rep_id: str, **fields: Any) -> Rep:
    return Rep.model_validate({"rep_id": rep_id, "pools": ["global"], **fields})


def route_record(offset: int, lead: str, sla: SlaClass = SlaClass.HIGH_INTENT,
                 **fields: Any) -> Record:
    req = RouteRequest(lead_id=lead, cycle=1, sla_class=sla, **fields)
    return Record(TOPICS.routing, 0, offset, lead.encode(),
                  orjson.dumps({"kind": "route", **req.to_json()}))


def activity_record(offset: int, data: Mapping[str, Any], *, source_offset: int = 41,
                    source_partition: int = 3) -> Record:
    """The activity as forwarded onto the routing topic (what forward_activity emits)."""
    out = forward_activity(activity_input(source_offset, data, source_partition), RULES,
                           TOPICS, NOW, VERSION)
    assert out.topic == TOPICS.routing
    return Record(TOPICS.routing, 0, offset, out.key, out.value)


def tick_record(offset: int, at: datetime) -> Record:
    return Record(TOPICS.routing, 0, offset, b"tick", tick(at))


def stage(*reps: Rep, accounts: Mapping[str, NamedAccount] | None = None) -> RoutingStage:
    return RoutingStage(RULES, TOPICS, VERSION, {r.rep_id: r for r in reps}, accounts or {})


def run(s: RoutingStage, records: Sequence[Record], now: datetime = NOW,
        store: Mapping[bytes, bytes] | None = None, *,
        direct: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                       dict[bytes, bytes | None]]:
    result = s.process(records, now, lambda: dict(store or {}), direct=direct)
    assignments, letters = [], []
    for out in result.outputs:
        body = orjson.loads(out.value)
        if out.topic == TOPICS.assignments:
            assert out.key == body["lead_id"].encode()
            Assignment.model_validate(body)  # what we publish is what the schema describes
            assignments.append(body)
        elif out.topic == TOPICS.sla:
            SlaEvent.model_validate(body)  # SLA outcomes: tests/unit/test_sla.py
        elif out.topic == TOPICS.recycle:
            assert body["kind"] == "recycle" and out.key == body["lead_id"].encode()
        else:
            assert out.topic == TOPICS.deadletter, out.topic
            DeadLetter.model_validate(body)
            letters.append(body)
    return assignments, letters, dict(result.writes)


def summary(assignments: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [(a["type"], a["lead_id"], a["rep_id"]) for a in assignments]


# --------------------------------------------------------------------------------------------
# route -> Assignment
# --------------------------------------------------------------------------------------------


def test_route_emits_assignment_json() -> None:
    s = stage(rep("A", max_open_leads=0), rep("B"))
    [a], letters, writes = run(s, [route_record(7, "L1", received_at=NOW.timestamp() - 0.2)])
    assert letters == []
    assert a == {
        "event_id": "L1:c1:assign:1",
        "type": "lead.assigned",
        "lead_id": "L1",
        "cycle": 1,
        "rep_id": "B",
        "pool": "global",
        "rule": "fallback",
        "trace": [{"rep_id": "A", "skipped": "at_capacity", "detail": "0/0 open"},
                  {"rep_id": "B", "chosen": "fallback"}],  # no null keys
        "sla": {"class": "high_intent", "due_at": "2026-11-23T10:05:00.000Z"},
        "router_version": VERSION,
        "rules_version": RULES.version,
        "emitted_at": "2026-11-23T10:00:00.000Z",
    }
    assert writes[OFFSET_KEY.encode()] == b"7"
    assert set(writes) == {b"lead:L1", b"cursor:global|*", OFFSET_KEY.encode()}
    held = orjson.loads(writes[b"lead:L1"] or b"null")
    assert (held["rep_id"], held["open"]) == ("B", True)


def test_behavioural_sla_in_the_reps_hours() -> None:
    friday_1630_berlin = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)
    s = stage(rep("A", timezone="Europe/Berlin"))
    [a], _, _ = run(s, [route_record(0, "L1", SlaClass.BEHAVIOURAL)], now=friday_1630_berlin)
    assert a["sla"] == {"class": "behavioural", "due_at": "2026-11-23T08:30:00.000Z"}


def test_queued_assignment_json() -> None:
    s = stage(rep("A", out_of_office=[{"start": "2026-11-01T00:00:00Z",
                                       "end": "2026-11-30T00:00:00Z"}]))
    [a], _, writes = run(s, [route_record(0, "L1", country="DE", language="de")])
    assert (a["event_id"], a["type"], a["rep_id"], a["rule"], a["pool"]) == (
        "L1:c1:queued", "lead.queued", None, None, "global")
    assert a["trace"] == [
        {"skipped": "pool_without_reps", "detail": "pool EMEA has no active reps; using global"},
        {"skipped": "language_unmatched", "detail": "nobody in global speaks de; all reps kept"},
        {"rep_id": "A", "skipped": "out_of_office", "detail": "until 2026-11-30T00:00Z"},
        {"skipped": "nobody_eligible", "detail": "queued in global"},
    ]
    assert a["sla"] == {"class": "high_intent", "due_at": "2026-11-23T10:05:00.000Z"}
    assert b"queue:global" in writes


def test_named_account_assignment() -> None:
    accounts = {"bigco.com": NamedAccount(account_domain="bigco.com", owner_rep_id="O")}
    s = stage(rep("A"), rep("O", pools=["EMEA"]), accounts=accounts)
    [a], _, _ = run(s, [route_record(0, "L1", account_domains=("bigco.com",))])
    assert (a["rep_id"], a["rule"]) == ("O", "named_account")
    assert a["trace"] == [{"rep_id": "O", "chosen": "named_account",
                           "detail": "owner of bigco.com"}]


def test_duplicate_route_in_a_later_record_emits_nothing() -> None:
    s = stage(rep("A"), rep("B"))
    first, _, _ = run(s, [route_record(0, "L1")])
    again, letters, writes = run(s, [route_record(1, "L1")])
    assert summary(first) == [("lead.assigned", "L1", "A")]
    assert (again, letters) == ([], [])
    assert writes == {OFFSET_KEY.encode(): b"1"}


# --------------------------------------------------------------------------------------------
# activity
# --------------------------------------------------------------------------------------------


def test_activity_from_a_non_holder_is_dead_lettered_with_its_original_source() -> None:
    s = stage(rep("A"), rep("B"))
    run(s, [route_record(0, "L1")])
    data = activity("L1", "B", "accepted")
    assignments, [letter], writes = run(s, [activity_record(1, data, source_offset=41,
                                                            source_partition=3)])
    assert assignments == []
    assert letter["reason"] == "not_holder"
    assert "field 'rep_id'" in letter["error"] and "held by A" in letter["error"]
    assert (letter["source_topic"], letter["partition"], letter["offset"]) == (
        TOPICS.activity, 3, 41)
    assert letter["key"] == "L1"
    assert orjson.loads(letter["value"]) == data  # the value as the producer sent it
    assert letter["router_version"] == VERSION
    assert writes == {OFFSET_KEY.encode(): b"1"}  # nothing applied
    assert s.state is not None and s.state.open_count("A") == 1


def test_activity_on_an_unassigned_lead_is_dead_lettered() -> None:
    s = stage(rep("A"))
    _, [letter], _ = run(s, [activity_record(0, activity("L9", "A", "first_touch"))])
    assert letter["reason"] == "not_holder"
    assert letter["error"] == "field 'rep_id': lead L9 is not assigned to anyone"


def test_activity_after_the_holding_ended_is_dead_lettered() -> None:
    s = stage(rep("A"))
    run(s, [route_record(0, "L1")])
    _, letters, _ = run(s, [activity_record(1, activity("L1", "A", "disqualified"))])
    assert letters == []
    _, [letter], _ = run(s, [activity_record(2, activity("L1", "A", "first_touch"))])
    assert letter["error"] == "field 'rep_id': A no longer holds lead L1 (disqualified)"


def test_accepted_frees_capacity_and_drains_the_queue_in_the_same_batch() -> None:
    s = stage(rep("A", max_open_leads=1))
    first, _, _ = run(s, [route_record(0, "L1"), route_record(1, "L2")])
    assert summary(first) == [("lead.assigned", "L1", "A"), ("lead.queued", "L2", None)]
    later = NOW + timedelta(minutes=2)
    [a], letters, writes = run(s, [activity_record(2, activity("L1", "A", "accepted"))],
                               now=later)
    assert letters == []
    assert (a["event_id"], a["rep_id"], a["lead_id"]) == ("L2:c1:assign:1", "A", "L2")
    assert a["trace"][-1] == {"detail": "from the queue of global"}
    # the SLA clock of a queued lead started when it was queued
    assert a["sla"]["due_at"] == "2026-11-23T10:05:00.000Z"
    assert a["emitted_at"] == "2026-11-23T10:02:00.000Z"
    assert writes[b"queue:global"] is None
    assert orjson.loads(writes[b"lead:L1"] or b"null")["open"] is False
    assert orjson.loads(writes[b"lead:L2"] or b"null")["open"] is True


def test_a_freed_slot_goes_to_the_queued_lead_before_a_later_sql_in_the_same_batch() -> None:
    """Queued leads are served in arrival order however the records are batched."""
    records = [route_record(0, "L1"), route_record(1, "L2"),
               activity_record(2, activity("L1", "A", "released")), route_record(3, "L3")]
    one_batch = stage(rep("A", max_open_leads=1))
    together, _, _ = run(one_batch, records)
    one_by_one = stage(rep("A", max_open_leads=1))
    separately = [a for r in records for a in run(one_by_one, [r])[0]]
    expected = [("lead.assigned", "L1", "A"), ("lead.queued", "L2", None),
                ("lead.assigned", "L2", "A"), ("lead.queued", "L3", None)]
    assert summary(together) == summary(separately) == expected


def test_first_touch_does_not_drain() -> None:
    s = stage(rep("A", max_open_leads=1))
    run(s, [route_record(0, "L1"), route_record(1, "L2")])
    out, _, writes = run(s, [activity_record(2, activity("L1", "A", "first_touch"))])
    assert out == []
    held = orjson.loads(writes[b"lead:L1"] or b"null")
    assert held["first_touch_at"] == NOW.timestamp()
    assert held["open"] is True


# --------------------------------------------------------------------------------------------
# tick
# --------------------------------------------------------------------------------------------


def test_tick_drains_a_queue_once_out_of_office_ended() -> None:
    back = NOW + timedelta(hours=1)
    s = stage(rep("A", out_of_office=[{"start": "2026-11-01T00:00:00Z",
                                       "end": back.isoformat()}]))
    queued, _, _ = run(s, [route_record(0, "L1", SlaClass.BEHAVIOURAL)])
    assert summary(queued) == [("lead.queued", "L1", None)]
    assert run(s, [tick_record(1, NOW + timedelta(minutes=30))],
               now=NOW + timedelta(minutes=30))[0] == []
    [a], _, writes = run(s, [tick_record(2, back)], now=back)
    assert (a["type"], a["rep_id"], a["event_id"]) == ("lead.assigned", "A", "L1:c1:assign:1")
    assert a["sla"]["due_at"] == "2026-11-23T11:00:00.000Z"  # from queueing, 1 business hour
    assert writes[OFFSET_KEY.encode()] == b"2"


# --------------------------------------------------------------------------------------------
# replays and state
# --------------------------------------------------------------------------------------------


def apply_writes(store: dict[bytes, bytes], writes: Mapping[bytes, bytes | None]) -> None:
    for key, value in writes.items():
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value


def test_replayed_records_at_or_below_the_applied_offset_do_nothing() -> None:
    s = stage(rep("A", max_open_leads=1), rep("B", max_open_leads=1))
    batch = [route_record(0, "L1"), route_record(1, "L2"), route_record(2, "L3"),
             activity_record(3, activity("L1", "A", "accepted"))]
    first, _, writes = run(s, batch)
    assert summary(first) == [("lead.assigned", "L1", "A"), ("lead.assigned", "L2", "B"),
                              ("lead.queued", "L3", None), ("lead.assigned", "L3", "A")]
    assert writes[OFFSET_KEY.encode()] == b"3"
    assert run(s, batch) == ([], [], {})
    assert run(s, batch[2:]) == ([], [], {})


def test_restart_from_stored_state_skips_applied_records() -> None:
    store: dict[bytes, bytes] = {}
    s = stage(rep("A", max_open_leads=1), rep("B"))
    batch = [route_record(0, "L1"),
             activity_record(1, activity("L1", "A", "rejected", reason="no_fit"))]
    _, _, writes = run(s, batch)
    apply_writes(store, writes)
    assert store[OFFSET_KEY.encode()] == b"1"
    # a new worker picks the partition up, and the broker replays from before the commit:
    # re-applying the rejection would dead-letter it (A no longer holds L1)
    restarted = stage(rep("A", max_open_leads=1), rep("B"))
    later = NOW + timedelta(minutes=1)
    out, letters, writes = run(restarted, [*batch, route_record(2, "L2")], now=later,
                               store=store)
    assert letters == []
    assert summary(out) == [("lead.assigned", "L2", "B")]  # the cursor was restored
    assert writes[OFFSET_KEY.encode()] == b"2"
    assert restarted.state is not None
    assert restarted.state.holdings["L1"].ended_by == "rejected"
    assert restarted.state.open_by_rep == {"B": {"L2"}}


def test_state_writes_include_the_offset_even_when_nothing_changed() -> None:
    s = stage(rep("A"))
    _, _, writes = run(s, [tick_record(5, NOW)])
    assert writes == {OFFSET_KEY.encode(): b"5"}


def test_an_unreadable_routing_record_is_dead_lettered_and_the_stream_goes_on() -> None:
    s = stage(rep("A"))
    bad = Record(TOPICS.routing, 0, 0, b"L0", b'{"kind": "mystery"}')
    [a], [letter], writes = run(s, [bad, route_record(1, "L1")])
    assert letter["reason"] == "internal_error"
    assert "mystery" in letter["error"]
    assert (letter["source_topic"], letter["offset"]) == (TOPICS.routing, 0)
    assert a["lead_id"] == "L1"
    assert writes[OFFSET_KEY.encode()] == b"1"


def handed_over(record: Record) -> Record:
    """A route request as the worker hands it over in process (processor._direct)."""
    return Record(record.topic, 0, -1, record.key, record.value)


def published(record: Record, offset: int) -> Record:
    """Its published copy, as the routing stage reads it back from the topic later."""
    assert record.value is not None
    return Record(record.topic, 0, offset, record.key, applied_copy(record.value))


def test_records_handed_over_in_process_route_without_moving_the_applied_offset() -> None:
    s = stage(rep("A", max_open_leads=1), rep("B", max_open_leads=1))
    run(s, [tick_record(4, NOW)])  # applied offset 4
    routes = [route_record(0, "L1"), route_record(0, "L2")]  # offsets are not theirs yet
    out, _, writes = run(s, [handed_over(r) for r in routes], direct=True)
    assert summary(out) == [("lead.assigned", "L1", "A"), ("lead.assigned", "L2", "B")]
    assert OFFSET_KEY.encode() not in writes and s.applied_offset == 4
    assert writes, "the changed holdings and cursor are written with the transaction"


def test_a_published_copy_of_an_applied_record_is_skipped_when_read_back() -> None:
    s = stage(rep("A", max_open_leads=2))
    route = route_record(0, "L1")
    [first], _, _ = run(s, [handed_over(route)], direct=True)
    assert first["rep_id"] == "A"
    copy = published(route, 7)
    assert copy.value is not None and orjson.loads(copy.value)[APPLIED] is True
    # read back after its transaction committed: nothing again, the offset moves on
    out, letters, writes = run(s, [copy, route_record(8, "L2")])
    assert summary(out) == [("lead.assigned", "L2", "A")] and letters == []
    assert writes[OFFSET_KEY.encode()] == b"8"
    assert s.state is not None and s.state.open_by_rep == {"A": {"L1", "L2"}}


def test_the_published_copy_keeps_the_record_and_handing_over_equals_reading() -> None:
    """Direct delivery decides what reading the record from the topic would have decided."""
    routes = [route_record(i, f"L{i}") for i in range(5)]
    by_topic, _, _ = run(stage(rep("A", max_open_leads=2), rep("B", max_open_leads=2)), routes)
    in_process, _, _ = run(stage(rep("A", max_open_leads=2), rep("B", max_open_leads=2)),
                           [handed_over(r) for r in routes], direct=True)
    assert summary(in_process) == summary(by_topic)
    assert routes[0].value is not None
    copy = orjson.loads(applied_copy(routes[0].value))
    assert copy.pop(APPLIED) is True and copy == orjson.loads(routes[0].value)
