"""The pure parts of the chaos tooling: kill schedules, which broker node to hurt, the loss
rate, the trace reader, and the verifier's by-lead report of lost outputs."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from router.adapters.topics import Topics
from router.domain.rules import load_rules
from router.harness.chaos.faults import BrokerFaultError, busiest_leader, quorum_leader
from router.harness.chaos.kill_loop import (
    MIN_UP_SECONDS,
    TAIL_SECONDS,
    WARMUP_SECONDS,
    RunOutcome,
    kill_schedule,
    loss_rate,
)
from router.harness.chaos.traces import Traces, _offsets
from router.tools.history import HistoryRecord
from router.tools.verify import Lost, Report, check_qualification, check_routing

# -- kill schedules ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_kills_alternate_never_overlap_and_stay_inside_the_traffic(seed: int) -> None:
    kills = kill_schedule(seed, kills=8, traffic_s=70, gap_s=3)
    assert [k.worker for k in kills] == [1, 2] * 4
    assert kills[0].at_s >= WARMUP_SECONDS
    assert kills[-1].at_s + kills[-1].gap_s <= 70 - TAIL_SECONDS + 1e-6
    for a, b in itertools.pairwise(kills):
        assert b.at_s - a.at_s >= a.gap_s + MIN_UP_SECONDS - 0.02  # rounding to 10 ms


def test_a_seed_replays_its_schedule_and_another_seed_differs() -> None:
    assert kill_schedule(7, 6, 60, 3) == kill_schedule(7, 6, 60, 3)
    assert kill_schedule(7, 6, 60, 3) != kill_schedule(8, 6, 60, 3)


def test_a_schedule_that_cannot_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        kill_schedule(1, kills=20, traffic_s=60, gap_s=3)


# -- which node to hurt ------------------------------------------------------------------------

def test_the_busiest_leader_leads_the_most_partitions_ties_to_the_lowest_id() -> None:
    leaders = {("t", 0): 2, ("t", 1): 3, ("t", 2): 2, ("r", 0): 3, ("t", 3): -1, ("t", 4): 1}
    assert busiest_leader(leaders) == (2, 2)
    with pytest.raises(BrokerFaultError):
        busiest_leader({("t", 0): -1})


def test_the_controller_is_the_metadata_partitions_quorum_leader() -> None:
    answer: dict[str, Any] = {"error_code": 0, "topics": [{"topic_name": "__cluster_metadata",
                              "partitions": [{"partition_index": 0, "error_code": 0,
                                              "leader_id": 3, "leader_epoch": 5}]}]}
    assert quorum_leader(answer) == (3, 5)
    answer["topics"][0]["partitions"][0]["leader_id"] = -1
    with pytest.raises(BrokerFaultError, match="no leader"):
        quorum_leader(answer)


# -- loss rate ---------------------------------------------------------------------------------

def test_loss_rate_counts_runs_with_any_loss_and_every_lost_output() -> None:
    lost = [Lost("L-1", "lead.sql"), Lost("L-1", "lead.assigned or lead.queued"),
            Lost("L-2", "dead letter")]
    outcomes = [RunOutcome(1), RunOutcome(2, violations=3, lost=lost), RunOutcome(3),
                RunOutcome(4, violations=1)]
    rate = loss_rate(outcomes)
    assert (rate.runs, rate.lossy_runs, rate.lost_outputs, rate.lost_leads,
            rate.violating_runs) == (4, 1, 3, 2, 2)
    assert rate.rate == 0.25
    assert rate.render().startswith("loss rate: 1/4 runs lost output (25%); 3 lost outputs")
    assert loss_rate([]).rate == 0.0


# -- traces ------------------------------------------------------------------------------------

def _batch(ranges: dict[str, str], dropped: int = 0, generation: int = 3) -> str:
    return orjson.dumps({"logger": "router.trace", "msg": "batch", "agent": "qualify",
                         "generation": generation, "ranges": ranges,
                         "dropped": dropped}).decode()


def test_traces_find_the_records_no_batch_reached() -> None:
    traces = Traces()
    for line in [_batch({"tp[0]": "0-9/10", "tp[1]": "0-4/5"}), "not json", "{broken",
                 _batch({"tp[0]": "12-20/9"}), _batch({"tp[1]": "5-7/3"}, dropped=2),
                 orjson.dumps({"logger": "router.trace", "msg": "commit", "ok": True,
                               "generation": 4, "offsets": {"r[0]": 30}}).decode()]:
        traces.add_line(line, "worker-1.log")
    assert traces.batches == 3
    inputs = [("tp[0]", o) for o in range(22)] + [("tp[2]", 0)]
    assert traces.unreached(inputs) == [("tp[0]", 10), ("tp[0]", 11), ("tp[0]", 21),
                                        ("tp[2]", 0)]
    assert traces.status("tp[0]", 3) == "reached the agent (worker-1.log, generation 3)"
    assert traces.status("tp[0]", 11) == "NEVER reached the agent"
    assert traces.status("tp[1]", 6).startswith("reached the agent only in batches that drop")
    assert traces.status("r[0]", 29, traced=False) == (
        "not traced (no batch trace for this partition); committed over (to 30,"
        " worker-1.log, generation 4)")
    assert _offsets([3, 4, 5, 9, 11, 12]) == "3-5,9,11-12"


def test_traces_keep_the_guards_words_and_the_commits_around_a_lost_record() -> None:
    traces = Traces()
    for offset in (20, 44, 79):
        traces.add_line(orjson.dumps({"logger": "router.trace", "msg": "commit", "ok": True,
                                      "generation": 5, "offsets": {"r[0]": offset}}).decode(),
                        "worker-1.log")
    traces.add_line(orjson.dumps({"ts": "2026-12-01T22:50:11.561+00:00", "level": "warning",
                                  "logger": "router.worker", "msg": "fetch skipped records",
                                  "partition": "r[0]", "expected": 21, "got": 49}).decode(),
                    "worker-1.log")
    assert traces.status("r[0]", 46, traced=False).endswith(
        "committed over (to 79, worker-1.log, generation 5; the commit before was 44,"
        " worker-1.log, generation 5)")
    assert traces.guards["r[0]"] == [("22:50:11.561", "worker-1.log",
                                      "fetch skipped records (expected 21, got 49)")]


# -- the verifier's lost-output report ---------------------------------------------------------

T0 = 1_800_000_000.0
TOPICS = Topics.with_prefix("")


def _record(topic: str, offset: int, key: str, value: dict[str, Any] | bytes) -> HistoryRecord:
    data = value if isinstance(value, bytes) else orjson.dumps(value)
    return HistoryRecord(topic, 0, offset, T0 + offset, key.encode(), data)


def _iso(offset: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(T0 + offset, UTC).isoformat()


def test_every_lost_output_is_reported_by_lead() -> None:
    rules = load_rules(None)
    fit = {"updated_at": _iso(0), "seniority": "vp", "country": "US",
           "company": {"employees": 500, "industry": "saas"}}
    profiles = [_record(TOPICS.profiles, i, lead, {"lead_id": lead, **fit})
                for i, lead in enumerate(["L-1", "L-2"])]
    touchpoints = [
        _record(TOPICS.touchpoints, 0, "L-1", {"event_id": "e1", "lead_id": "L-1",
                                               "type": "demo_request", "occurred_at": _iso(1)}),
        _record(TOPICS.touchpoints, 1, "L-2", {"event_id": "e2", "lead_id": "L-2",
                                               "type": "demo_request", "occurred_at": _iso(2)}),
        _record(TOPICS.touchpoints, 2, "L-3", b'{"event_id": "tp-broken", "lead_id": '),
    ]
    # L-1 became SQL but was never routed; L-2's SQL never came; L-3's hostile record has no
    # dead letter
    transitions = [{"event_id": "L-1:c1:sql", "type": "lead.sql", "lead_id": "L-1",
                    "cycle": 1}]
    report = Report()
    check_qualification(report, rules, TOPICS, touchpoints, profiles, {}, set(), transitions)
    check_routing(report, {}, transitions, [], [], [], T0 + 100)
    assert report.lost_by_lead() == {
        "L-1": [Lost("L-1", "lead.assigned or lead.queued", "cycle 1")],
        "L-2": [Lost("L-2", "lead.sql", "cycle 1")],
        "L-3": [Lost("L-3", "dead letter", f"{TOPICS.touchpoints}[0]@2")],
    }
    assert len(report.violations) == 3
    text = report.render()
    assert "lost outputs: 3 of 3 leads" in text
    assert "    L-2: lead.sql (cycle 1)" in text


def test_strict_mode_makes_any_repeated_event_id_a_violation() -> None:
    from router.tools.verify import _dedupe

    records = [_record(TOPICS.transitions, i, "L-1", {"event_id": "L-1:c1:sql",
                                                      "type": "lead.sql", "lead_id": "L-1",
                                                      "cycle": 1}) for i in range(2)]
    relaxed, strict = Report(), Report(strict=True)
    assert len(_dedupe(relaxed, "t", records, ("type",))) == 1
    assert relaxed.violations == [] and relaxed.repeats["t"] == 1
    _dedupe(strict, "t", records, ("type",))
    assert strict.violations == ["t: L-1:c1:sql repeated (exactly-once allows none)"]
