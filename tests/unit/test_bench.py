"""The pure parts of `leadrouter bench`: percentiles, throughput from commit samples, state size,
peak RSS parsing, ratios and targets, the table, the JSON line, the event mix and cleanup."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from router.adapters.topics import Topics
from router.domain.events import LeadProfile, Rep, Touchpoint
from router.domain.rules import load_rules
from router.harness.bench.load import (
    MAX_TOUCHPOINT_BYTES,
    MIN_TOUCHPOINT_BYTES,
    bench_roster,
    build_mix,
    probe_profiles,
    probe_routes,
    probe_touchpoint,
)
from router.harness.bench.measure import (
    loop_lag,
    parse_cpu_seconds,
    parse_vmhwm,
    percentile,
    ratio,
    state_size,
    throughput,
)
from router.harness.bench.phases import Processes
from router.harness.bench.report import REQUIRED_KEYS, TARGETS, add_ratios, json_line, render_table
from router.records import Record
from router.service.routing_stage import RoutingStage

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


# ---------------------------------------------------------------------------- percentile


def test_percentile_nearest_rank_on_unordered_input() -> None:
    values = [float(v) for v in range(101, 0, -1)]  # 101 .. 1
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 0.5) == 51.0
    assert percentile(values, 0.95) == 96.0
    assert percentile(values, 0.99) == 100.0
    assert percentile(values, 1.0) == 101.0


def test_percentile_of_one_value_and_bad_input() -> None:
    assert percentile([7.5], 0.99) == 7.5
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)


# ---------------------------------------------------------------------------- throughput


def _steady(rate: int, seconds: int, start: float = 0.0) -> list[tuple[float, int]]:
    """A commit each second at `rate` events/s, polled twice per commit (repeats)."""
    out = []
    for s in range(seconds + 1):
        out.append((start + s, rate * s))
        out.append((start + s + 0.5, rate * s))
    return out


def test_throughput_steady_rate_between_the_marks() -> None:
    samples = _steady(1000, 10)
    assert throughput(samples, lo=1000, hi=9000) == pytest.approx(1000.0)


def test_throughput_ignores_a_slow_start_and_the_tail() -> None:
    # 5 s of start-up with nothing, then 2000/s, then a slow last stretch
    samples = [(0.0, 0), (5.0, 0)] + [(5.0 + s, 2000 * s) for s in range(1, 10)]
    samples += [(20.0, 19_000), (40.0, 20_000)]
    assert throughput(samples, lo=2000, hi=18_000) == pytest.approx(2000.0)


def test_throughput_not_before_moves_the_start() -> None:
    # 4000/s while loading (until t=3), 1000/s after
    samples = [(0.0, 0), (1.0, 4000), (2.0, 8000), (3.0, 12000)]
    samples += [(3.0 + s, 12000 + 1000 * s) for s in range(1, 20)]
    assert throughput(samples, lo=1000, hi=28_000) > 1000
    assert throughput(samples, lo=1000, hi=28_000, not_before=3.0) == pytest.approx(1000.0)


def test_throughput_one_jump_over_both_marks_uses_the_sample_before() -> None:
    samples = [(0.0, 0), (1.0, 0), (2.0, 10_000), (3.0, 10_000)]
    assert throughput(samples, lo=1000, hi=9000) == pytest.approx(10_000.0)


def test_throughput_when_hi_never_reached_ends_at_the_last_progress() -> None:
    samples = [(0.0, 0), (1.0, 100), (2.0, 200), (3.0, 300), (4.0, 300)]
    assert throughput(samples, lo=100, hi=1000) == pytest.approx(100.0)


def test_throughput_without_progress_raises() -> None:
    with pytest.raises(ValueError, match="warm-up"):
        throughput([(0.0, 0), (1.0, 10)], lo=100, hi=1000)
    with pytest.raises(ValueError, match="no progress"):
        throughput([(0.0, 200), (1.0, 200)], lo=100, hi=1000)


# ---------------------------------------------------------------------------- state, RSS


def test_state_size_keeps_the_newest_record_per_key_and_drops_tombstones() -> None:
    records: list[tuple[bytes | None, bytes | None]] = [
        (b"L-1", b"x" * 100),
        (b"L-2", b"y" * 50),
        (b"L-1", b"z" * 10),  # newer, smaller
        (b"L-3", b"w" * 7),
        (b"L-3", None),  # deleted
    ]
    assert state_size(records) == (2, (3 + 10) + (3 + 50))


def test_parse_vmhwm() -> None:
    status = "Name:\tpython\nVmPeak:\t  999 kB\nVmHWM:\t  123456 kB\nVmRSS:\t  100 kB\n"
    assert parse_vmhwm(status) == 123456 * 1024
    with pytest.raises(ValueError):
        parse_vmhwm("Name:\tpython\n")
    assert parse_vmhwm(status, "VmRSS") == 100 * 1024


def test_parse_cpu_seconds_skips_a_command_name_with_spaces() -> None:
    stat = "4242 (python -m router) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0"
    assert parse_cpu_seconds(stat, 100) == pytest.approx(3.0)


# ---------------------------------------------------------------------------- ratios, output


def _result(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "mode": "full", "store": "memory", "leads": 100_000, "touchpoints": 200_000, "reps": 50,
        "pools": 5, "partitions": 8,
        "raw_events_per_s": 50_000.0, "floor_take_events_per_s": 12_000.0,
        "floor_iter_events_per_s": 10_000.0, "router_1w_events_per_s": 6_000.0,
        "router_2w_events_per_s": 10_800.0,
        "latency_offered_per_s": 3000.0, "latency_achieved_per_s": 2990.0,
        "latency_probes": 600, "sql_received": 600, "assigned_received": 598,
        "sql_p50_ms": 60.0, "sql_p95_ms": 120.0, "sql_p99_ms": 240.0, "sql_max_ms": 300.0,
        "assigned_p50_ms": 110.0, "assigned_p95_ms": 300.0, "assigned_p99_ms": 620.0,
        "assigned_max_ms": 700.0,
        "worker_peak_rss_mb": 400.0, "worker_2w_peak_rss_mb": 250.0,
        "state_leads": 100_000, "changelog_records": 300_000, "state_bytes": 70_000_000,
        "state_bytes_per_lead": 700.0, "state_mb_per_100k_leads": 70.0,
        "cold_start_seconds": 7.0, "restore_seconds": 12.0, "restore_s_per_100k_leads": 12.0,
        "wall_seconds": 290.0,
    }
    base.update(overrides)
    return add_ratios(base)


def test_ratio_of_zero_denominator_is_zero() -> None:
    assert ratio(5.0, 0.0) == 0.0
    assert ratio(3.0, 2.0) == 1.5


def test_add_ratios_takes_the_faster_floor() -> None:
    r = _result()
    assert r["floor_events_per_s"] == 12_000.0
    assert r["router_vs_floor"] == 0.5
    assert r["router_vs_raw"] == 0.12
    assert r["two_vs_one_worker"] == 1.8
    r = _result(floor_iter_events_per_s=15_000.0)
    assert r["floor_events_per_s"] == 15_000.0
    assert r["router_vs_floor"] == 0.4


def test_targets_met_and_missed() -> None:
    r = _result()
    verdicts = {t.key: t.met(float(r[t.key])) for t in TARGETS if t.key in r}
    assert verdicts == {
        "router_vs_floor": False,  # 0.5 < 2
        "two_vs_one_worker": True,  # 1.8 >= 1.8
        "sql_p99_ms": False,  # 240 > 60
        "assigned_p99_ms": False,  # 620 > 120
        "state_bytes_per_lead": True,  # 700 <= 2048
        "restore_s_per_100k_leads": False,  # 12 > 5
        "rss_mb_per_100k_leads": False,  # 400 MB at 100k leads > 300
    }
    with_alo = _result(router_1w_alo_events_per_s=7_000.0)
    assert with_alo["eos_cost"] == round(1 - 6_000 / 7_000, 3)
    assert next(t for t in TARGETS if t.key == "eos_cost").met(with_alo["eos_cost"])


def test_the_routing_ceiling_names_the_touchpoint_rate_it_caps() -> None:
    r = _result(routing_sql_per_s=900.0, sql_per_touchpoint=0.03)
    assert r["routing_bottleneck_touchpoints_per_s"] == 30_000.0
    table = render_table(r)
    assert "900 /s" in table and "30,000 ev/s" in table
    # no SQL read back: the ceiling alone, and the table still renders
    table = render_table(_result(routing_sql_per_s=900.0, sql_per_touchpoint=0.0))
    assert "900 /s" in table and "the bottleneck from" not in table


def test_render_table_shows_figures_ratios_and_verdicts() -> None:
    table = render_table(_result())
    lines = table.splitlines()
    assert "200,000 touchpoints" in lines[0] and "100,000 leads" in lines[0]
    row = {line.split("  ")[0]: line for line in lines[2:]}
    assert "6,000 ev/s" in row["router, 1 worker (exactly_once)"]
    assert "12,000 ev/s" in row["faust floor, take_events"]
    assert "0.50 x" in row["router / faust floor"] and row["router / faust floor"].endswith(
        "MISSED")
    assert "1.80 x" in row["2 workers / 1 worker"] and row["2 workers / 1 worker"].endswith(
        "met")
    assert "60/120/240/300 ms" in row["touchpoint -> lead.sql p50/p95/p99/max"]
    assert row["touchpoint -> lead.sql p50/p95/p99/max"].endswith("MISSED")
    assert row["touchpoint -> lead.assigned p50/p95/p99/max"].endswith("MISSED")
    assert "700 B" in row["state per active lead"]
    assert "12.0 s" in row["restore per 100k leads"]
    assert row["restore per 100k leads"].endswith("MISSED")
    assert "3,000 touchpoints/s offered" in table
    assert "CPU in use" not in table
    with_cpu = render_table(_result(r1_worker_cpu_cores=0.9, r1_broker_cpu_cores=0.6))
    assert "0.90 / 0.60 cores" in with_cpu
    assert "loop lag" not in table
    with_lag = render_table(_result(bench_loop_lag_p99_ms=4.7))
    assert "5 ms" in next(line for line in with_lag.splitlines() if "loop lag" in line)


async def test_loop_lag_measures_a_blocked_loop_and_stops_at_its_deadline() -> None:
    lags: list[float] = []
    task = asyncio.create_task(loop_lag(lags, time.monotonic() + 0.2, interval=0.005))
    await asyncio.sleep(0.02)
    time.sleep(0.05)  # the loop is blocked: the sleeper wakes ~50 ms late
    await asyncio.wait_for(task, 1.0)  # it ends by itself after its deadline
    assert max(lags) >= 40
    assert len(lags) >= 5


def test_json_line_has_every_figure_and_the_verdicts() -> None:
    line = json_line(_result())
    assert "\n" not in line
    data = orjson.loads(line)
    assert data["bench"] == "leadrouter"
    for key in REQUIRED_KEYS:
        assert isinstance(data[key], int | float), key
    assert data["router_vs_floor"] == 0.5
    assert data["targets"]["router_vs_floor"] == {"target": ">= 2", "met": False}
    assert data["targets"]["sql_p99_ms"] == {"target": "<= 60", "met": False}
    assert data["targets"]["eos_cost"] == {"target": "<= 0.2", "met": None}  # not measured
    assert set(data["targets"]) == {t.key for t in TARGETS}


def test_json_line_refuses_an_incomplete_result() -> None:
    r = _result()
    del r["restore_seconds"]
    with pytest.raises(KeyError, match="restore_seconds"):
        json_line(r)


# ---------------------------------------------------------------------------- the event mix


def test_roster_has_ten_valid_reps_in_each_pool_of_the_rules() -> None:
    rules = load_rules(None)
    expected = {t.pool for t in rules.routing.territories} | {rules.routing.fallback_pool}
    reps = [Rep.model_validate(orjson.loads(v)) for _, v in bench_roster(NOW)]
    assert len(reps) == 50
    assert len({r.rep_id for r in reps}) == 50
    by_pool: dict[str, int] = {}
    for rep in reps:
        assert len(rep.pools) == 1
        by_pool[rep.pools[0]] = by_pool.get(rep.pools[0], 0) + 1
        assert rep.max_open_leads >= 100_000
    assert by_pool == dict.fromkeys(expected, 10)


def test_mix_covers_every_lead_with_valid_touchpoints_of_200_to_400_bytes() -> None:
    mix = build_mix(leads=500, touchpoints=1500, now=NOW)
    assert len(mix.profiles) == 500
    assert len(mix.touchpoints) == 1500
    sizes = [len(v) for _, v in mix.touchpoints]
    assert min(sizes) >= MIN_TOUCHPOINT_BYTES
    assert max(sizes) <= MAX_TOUCHPOINT_BYTES
    assert {k for k, _ in mix.touchpoints} == {k for k, _ in mix.profiles}
    event_ids = set()
    for key, value in mix.touchpoints:
        tp = Touchpoint.model_validate(orjson.loads(value))
        assert tp.lead_id.encode() == key
        assert tp.occurred_at <= NOW
        event_ids.add(tp.event_id)
    assert len(event_ids) == 1500
    for key, value in mix.profiles:
        assert LeadProfile.model_validate(orjson.loads(value)).lead_id.encode() == key
    more = mix.more_touchpoints(100, NOW)
    assert not event_ids & {orjson.loads(v)["event_id"] for _, v in more}


def test_probe_leads_are_direct_path_material() -> None:
    (key, value), *_ = probe_profiles("r1", 3, NOW)
    profile = LeadProfile.model_validate(orjson.loads(value))
    assert profile.seniority == "vp" and profile.buying_role == "decision_maker"
    assert profile.company is not None and profile.company.industry == "saas"
    tp = Touchpoint.model_validate(orjson.loads(probe_touchpoint(key, NOW)))
    assert tp.type == "demo_request" and tp.lead_id.encode() == key
    assert MIN_TOUCHPOINT_BYTES <= len(probe_touchpoint(key, NOW)) <= MAX_TOUCHPOINT_BYTES


def test_probe_routes_are_route_records_the_routing_stage_assigns() -> None:
    profiles = probe_profiles("rc", 8, NOW)
    routes = probe_routes(profiles, NOW)
    assert [key for key, _ in routes] == [key for key, _ in profiles]
    assert all(orjson.loads(value)["kind"] == "route" for _, value in routes)
    rules = load_rules(None)
    roster = {key.decode(): Rep.model_validate(orjson.loads(value))
              for key, value in bench_roster(NOW)}
    stage = RoutingStage(rules, Topics.with_prefix(""), "test", roster, {})
    records = [Record("leadrouter-routing", 0, i, key, value)
               for i, (key, value) in enumerate(routes)]
    result = stage.process(records, NOW, dict)
    assigned = [orjson.loads(o.value) for o in result.outputs if o.topic == "leads.assignments"]
    assert sorted(a["lead_id"] for a in assigned) == sorted(k.decode() for k, _ in profiles)
    assert {a["type"] for a in assigned} == {"lead.assigned"}


# ---------------------------------------------------------------------------- cleanup


def test_processes_close_kills_what_the_bench_started() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)
    procs = Processes(others=[proc])
    procs.close()
    assert proc.poll() is not None
    assert procs.others == []


def test_the_prototype_row_and_ratio_appear_only_when_measured() -> None:
    without = _result()
    assert "direct_vs_floor" not in without
    assert "prototype" not in render_table(without)
    with_direct = _result(direct_events_per_s=18_000.0)
    assert with_direct["direct_vs_floor"] == 1.5
    table = render_table(with_direct)
    assert "prototype: qualifier on plain aiokafka" in table
    assert "1.50 x" in table
