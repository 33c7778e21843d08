"""The leads stage over plain records: touchpoints and profiles through the qualifier, sales
activity onto the routing stream, and records keyed for another partition counted, warned
about once per topic and forwarded to their lead's partition (no Kafka)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from router.domain.events import DeadLetter
from router.domain.rules import load_rules
from router.metrics import REGISTRY
from router.records import Output, Record, StageResult
from router.service.leads_stage import LeadsStage, forward_activity
from router.service.partitioning import murmur2_partition
from router.service.qualifier import Qualifier
from tests.unit.builders import NOW, TOPICS, activity, activity_input

RULES = load_rules()
VERSION = "test-leads"
PARTITIONS = 12


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def stage(*, repartition: bool = True) -> LeadsStage:
    qualifier = Qualifier(RULES, TOPICS, VERSION, lambda _domain: False)
    return LeadsStage(RULES, TOPICS, VERSION, qualifier, partitions=PARTITIONS,
                      repartition=repartition)


def home(lead: str) -> int:
    return murmur2_partition(lead.encode(), PARTITIONS)


def away(lead: str) -> int:
    """A partition the lead's records do not belong on."""
    return (home(lead) + 1) % PARTITIONS


def profile_record(offset: int, lead: str, partition: int | None = None) -> Record:
    data = {"lead_id": lead, "updated_at": (NOW - timedelta(days=1)).isoformat(),
            "seniority": "director", "buying_role": "decision_maker",
            "company": {"name": "Acme", "domain": "acme.io", "employees": 420,
                        "industry": "saas"}}
    return Record(TOPICS.profiles, home(lead) if partition is None else partition, offset,
                  lead.encode(), orjson.dumps(data))


def touch_record(offset: int, lead: str, kind: str = "demo_request",
                 partition: int | None = None) -> Record:
    data = {"event_id": f"{lead}-{offset}", "lead_id": lead, "type": kind,
            "occurred_at": (NOW - timedelta(hours=1)).isoformat()}
    return Record(TOPICS.touchpoints, home(lead) if partition is None else partition, offset,
                  lead.encode(), orjson.dumps(data))


def run(s: LeadsStage, records: list[Record], store: dict[bytes, bytes] | None = None,
        now: datetime = NOW) -> StageResult:
    return s.process(records, now, (store or {}).get)


def topics_of(outputs: list[Output]) -> list[str]:
    return [o.topic for o in outputs]


def misplaced_count(topic: str) -> float:
    return REGISTRY.get_sample_value("leadrouter_misplaced_records_total",
                                     {"topic": topic}) or 0.0


# --------------------------------------------------------------------------------------------
# LeadsStage.process
# --------------------------------------------------------------------------------------------


def test_placed_records_are_exactly_what_the_qualifier_decides() -> None:
    records = [profile_record(0, "L-a"), touch_record(1, "L-a"), touch_record(2, "L-b")]
    got = run(stage(), records)
    expected = Qualifier(RULES, TOPICS, VERSION, lambda _d: False).process(records, NOW,
                                                                           {}.get)
    assert got.outputs == expected.outputs
    assert got.writes == expected.writes
    assert {k for k, _v in got.writes} == {b"L-a", b"L-b"}
    assert TOPICS.routing in topics_of(got.outputs)  # L-a: fit director, demo request: SQL


def test_stored_state_is_read_through_the_store() -> None:
    s = stage()
    first = run(s, [profile_record(0, "L-a")])
    store = dict(first.writes)  # type: ignore[arg-type]
    second = run(s, [touch_record(1, "L-a")], store)
    assert TOPICS.routing in topics_of(second.outputs)  # the profile came from the store
    assert TOPICS.routing not in topics_of(run(stage(), [touch_record(1, "L-a")]).outputs)


def test_sales_activity_goes_onto_the_routing_stream_after_the_qualifiers_outputs() -> None:
    data = activity("L-a", "A", "accepted")
    record = activity_input(5, data, partition=home("L-a"))
    result = run(stage(), [touch_record(4, "L-a"), record])
    assert result.outputs[-1] == forward_activity(record, RULES, TOPICS, NOW, VERSION)
    assert result.outputs[-1].topic == TOPICS.routing
    assert [k for k, _v in result.writes] == [b"L-a"]  # activity writes no lead state


def test_a_batch_of_sales_activity_only_never_calls_the_qualifier() -> None:
    s = stage()
    s.qualifier = None  # type: ignore[assignment]  # any call would fail
    record = activity_input(0, activity("L-a", "A", "rejected", reason="bad_timing"),
                            partition=away("L-a"))
    result = run(s, [record])
    assert topics_of(result.outputs) == [TOPICS.routing]  # not checked for its partition
    assert result.writes == []


def test_invalid_activity_is_dead_lettered() -> None:
    record = activity_input(0, activity("L-a", "A", "waved"), partition=home("L-a"))
    [out] = run(stage(), [record]).outputs
    assert out.topic == TOPICS.deadletter
    assert orjson.loads(out.value)["reason"] == "unknown_value"


# --------------------------------------------------------------------------------------------
# Misplaced records (service/partitioning.py)
# --------------------------------------------------------------------------------------------


def test_misplaced_records_are_forwarded_to_their_leads_partition_not_applied() -> None:
    wrong_touch = touch_record(1, "L-m", partition=away("L-m"))
    wrong_profile = profile_record(2, "L-n", partition=away("L-n"))
    right = touch_record(3, "L-a")
    result = run(stage(), [wrong_touch, right, wrong_profile])
    forwarded = result.outputs[:2]  # the forwards come first
    assert forwarded == [
        Output(TOPICS.repartition_touchpoints, b"L-m", wrong_touch.value or b"",
               partition=home("L-m")),
        Output(TOPICS.repartition_profiles, b"L-n", wrong_profile.value or b"",
               partition=home("L-n")),
    ]
    assert [k for k, _v in result.writes] == [b"L-a"]  # only the placed record applied
    assert TOPICS.repartition_touchpoints not in topics_of(result.outputs[2:])


def test_in_place_applies_misplaced_records_where_they_arrived() -> None:
    wrong = touch_record(1, "L-m", partition=away("L-m"))
    result = run(stage(repartition=False), [wrong])
    assert not {TOPICS.repartition_touchpoints, TOPICS.repartition_profiles} & set(
        topics_of(result.outputs))
    assert [k for k, _v in result.writes] == [b"L-m"]


def test_a_forwarded_record_arriving_on_its_partition_is_applied() -> None:
    wrong = touch_record(1, "L-m", partition=away("L-m"))
    [forward] = run(stage(), [wrong]).outputs
    arrived = Record(forward.topic, home("L-m"), 0, forward.key, forward.value)
    result = run(stage(), [arrived])
    assert [k for k, _v in result.writes] == [b"L-m"]


@pytest.mark.parametrize("repartition", [True, False], ids=["repartition", "in_place"])
def test_misplaced_records_are_counted_per_topic_and_warned_about_once_per_topic(
    repartition: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    s = stage(repartition=repartition)
    touches = [touch_record(i, f"L-w{i}", partition=away(f"L-w{i}")) for i in range(3)]
    profile = profile_record(9, "L-p", partition=away("L-p"))
    before = {t: misplaced_count(t) for t in (TOPICS.touchpoints, TOPICS.profiles)}
    with caplog.at_level(logging.WARNING, logger="router.worker.app"):
        run(s, [*touches, touch_record(5, "L-a"), profile])
        run(s, touches[:1])
    assert misplaced_count(TOPICS.touchpoints) - before[TOPICS.touchpoints] == 4
    assert misplaced_count(TOPICS.profiles) - before[TOPICS.profiles] == 1
    warnings = [r for r in caplog.records
                if r.getMessage().startswith("records keyed for another partition")]
    assert [(r.name, r.topic) for r in warnings] == [  # type: ignore[attr-defined]
        ("router.worker.app", TOPICS.touchpoints), ("router.worker.app", TOPICS.profiles)]
    first: Any = warnings[0]
    assert (first.example_key, first.arrived_on, first.murmur2_partition, first.partitions) == (
        "L-w0", away("L-w0"), home("L-w0"), PARTITIONS)


# --------------------------------------------------------------------------------------------
# forward_activity
# --------------------------------------------------------------------------------------------


def test_forward_valid_activity() -> None:
    data = activity("L1", "A", "rejected", reason="bad_timing")
    record = activity_input(7, data, partition=2)
    out = forward_activity(record, RULES, TOPICS, NOW, VERSION)
    assert (out.topic, out.key) == (TOPICS.routing, b"L1")
    body = orjson.loads(out.value)
    assert body["kind"] == "activity"
    assert body["source"] == {"topic": TOPICS.activity, "partition": 2, "offset": 7,
                              "value": (record.value or b"").decode()}
    assert {k: body["activity"][k] for k in ("event_id", "lead_id", "rep_id", "type",
                                               "reason")} == {
        "event_id": "sa-1", "lead_id": "L1", "rep_id": "A", "type": "rejected",
        "reason": "bad_timing"}


@pytest.mark.parametrize(
    ("data", "reason", "names"),
    [
        pytest.param(activity("L1", "A", "rejected"), "missing_field", "'reason'",
                     id="rejection-without-reason"),
        pytest.param(activity("L1", "A", "waved"), "unknown_value", "'type'",
                     id="unknown-type"),
        pytest.param(activity("L1", "A", "rejected", reason="too_pricey"), "unknown_value",
                     "'reason'", id="unknown-reason"),
        pytest.param({k: v for k, v in activity("L1", "A", "accepted").items()
                      if k != "rep_id"}, "missing_field", "'rep_id'", id="missing-rep"),
        pytest.param(activity("L1", "A", "accepted", at=NOW + timedelta(hours=1)),
                     "future_event", "'occurred_at'", id="dated-in-the-future"),
    ],
)
def test_forward_refuses_invalid_activity(data: dict[str, Any], reason: str,
                                          names: str) -> None:
    record = activity_input(9, data, partition=1)
    out: Output = forward_activity(record, RULES, TOPICS, NOW, VERSION)
    assert (out.topic, out.key) == (TOPICS.deadletter, b"L1")
    letter = orjson.loads(out.value)
    DeadLetter.model_validate(letter)
    assert letter["reason"] == reason
    assert names in letter["error"]
    assert (letter["source_topic"], letter["partition"], letter["offset"]) == (
        TOPICS.activity, 1, 9)
    assert letter["value"] == (record.value or b"").decode()


def test_forward_refuses_a_key_that_is_not_the_lead() -> None:
    data = activity("L1", "A", "accepted")
    record = Record(TOPICS.activity, 0, 0, b"L2", orjson.dumps(data))
    out = forward_activity(record, RULES, TOPICS, NOW, VERSION)
    assert out.topic == TOPICS.deadletter
    assert orjson.loads(out.value)["reason"] == "key_mismatch"
