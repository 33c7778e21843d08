"""The dashboard and the alerts query metrics a live worker really exposes, named by the
Prometheus conventions, with labels that cannot carry per-lead values.

One worker on the embedded broker gets a little traffic that makes the labelled series appear
(touchpoints, a direct-path SQL that is assigned, one that is queued, a dead letter, a
rejection that recycles, an SLA breach with a 3 s budget, consumer lag), then GET /metrics.
Metric families without samples still print `# HELP` / `# TYPE` lines, which count as
exposed: the name check does not depend on the traffic, the label checks do.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from router.adapters.topics import Topics
from router.harness.brokers import LocalBroker
from router.harness.workers import WorkerProcess
from tests.deploy.manifests import (
    PROMETHEUS_GENERATED,
    all_exprs,
    metric_labels,
    promql_metric_names,
)
from tests.integration.conftest import collect, new_prefix, start_worker

pytestmark = pytest.mark.integration

RULES = """
name: metric-names
sla:
  high_intent_minutes: 0.05   # 3 s, so a breach happens during the test
  warning_fraction: 0.5
"""
REP = "R-mx-1"
LEAD_A, LEAD_B, LEAD_BAD = "L-mx-assigned-7f3a", "L-mx-queued-9c2e", "L-mx-refused-4b1d"
# values that must never show up in /metrics (they are per lead or personal)
PER_LEAD_VALUES = (LEAD_A, LEAD_B, LEAD_BAD, "lead.secret@example.com", "Secret Person",
                   "rep.secret@example.com", "budget next FY", "tp-mx-")
FORBIDDEN_LABELS = {"lead_id", "email", "event_id", "name", "title", "phone", "key", "offset",
                    "account_domain", "domain", "company", "comment", "trace", "cycle",
                    "url", "ip", "user", "user_id"}
TIME_WORDS = re.compile(r"latency|duration|seconds|\btime\b|\bwait", re.IGNORECASE)
NON_BASE_UNITS = re.compile(r"_(ms|milliseconds|minutes|hours|days|kb|mb|kilobytes|"
                            r"megabytes|percent)(_|$)")


def now() -> str:
    return datetime.now(UTC).isoformat()


async def send(producer: AIOKafkaProducer, topic: str, key: str, value: dict[str, Any] | bytes
               ) -> None:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    await producer.send_and_wait(topic, raw, key=key.encode())


async def make_sql(producer: AIOKafkaProducer, topics: Topics, lead: str) -> None:
    """A direct-path SQL: fit, VP, a demo request."""
    await send(producer, topics.profiles, lead, {
        "lead_id": lead, "updated_at": now(), "seniority": "vp", "country": "DE",
        "email": "lead.secret@example.com", "name": "Secret Person",
        "company": {"employees": 300, "industry": "saas"}})
    await send(producer, topics.touchpoints, lead, {
        "event_id": f"tp-mx-{lead}", "lead_id": lead, "type": "demo_request",
        "occurred_at": now()})


def has(lead: str, kind: str) -> Any:
    return lambda records: any(r.get("lead_id") == lead and r.get("type") == kind
                               for r in records)


async def drive(broker: LocalBroker, topics: Topics, worker: WorkerProcess) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=1)
    await producer.start()
    try:
        await send(producer, topics.reps, REP, {
            "rep_id": REP, "name": "Rep Secret", "email": "rep.secret@example.com",
            "pools": ["EMEA"], "max_open_leads": 1})
        deadline = time.monotonic() + 20
        while worker.get("/ready")[1].get("reps", 0) < 1:
            assert time.monotonic() < deadline, "roster not loaded"
            await asyncio.sleep(0.1)
        # assigned, then queued behind the rep's capacity of one
        await make_sql(producer, topics, LEAD_A)
        await collect(broker, topics.assignments, until=has(LEAD_A, "lead.assigned"),
                      timeout=30, settle=0.1)
        await make_sql(producer, topics, LEAD_B)
        await collect(broker, topics.assignments, until=has(LEAD_B, "lead.queued"),
                      timeout=30, settle=0.1)
        # a refused input
        await send(producer, topics.touchpoints, LEAD_BAD, b'{"lead_id": "' + LEAD_BAD.encode())
        await collect(broker, topics.deadletter, until=lambda rs: len(rs) >= 1, timeout=30,
                      settle=0.1)
        # the rep rejects A: the slot frees, A is recycled, B is assigned and then breaches
        await send(producer, topics.activity, LEAD_A, {
            "event_id": "sa-mx-reject", "lead_id": LEAD_A, "rep_id": REP, "type": "rejected",
            "reason": "no_budget", "comment": "budget next FY", "occurred_at": now()})
        await collect(broker, topics.sla, until=has(LEAD_B, "sla.breached"), timeout=40,
                      settle=0.1)
    finally:
        await producer.stop()


def scrape(worker: WorkerProcess) -> str:
    with urllib.request.urlopen(worker.base_url + "/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return str(resp.read().decode("utf-8"))


@pytest.fixture(scope="module")
def exposition(broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[str]:
    workdir: Path = tmp_path_factory.mktemp("metric-names")
    rules = workdir / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    prefix = new_prefix()
    worker = start_worker(broker, prefix, workdir, LEADROUTER_RULES=str(rules))
    try:
        asyncio.run(drive(broker, Topics.with_prefix(prefix), worker))
        # consumer lag is reported every 5 s; wait for it rather than for a fixed time
        deadline = time.monotonic() + 30
        text = scrape(worker)
        while "\nleadrouter_consumer_lag_records{" not in text:
            assert time.monotonic() < deadline, "no consumer lag series after 30 s"
            time.sleep(0.5)
            text = scrape(worker)
        yield text
    finally:
        worker.stop()


def families(text: str) -> dict[str, tuple[str, str]]:
    """name -> (type, help) from the `# TYPE` / `# HELP` lines."""
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.MULTILINE))
    return {name: (kind, helps.get(name, ""))
            for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)}


def exposed_names(text: str) -> set[str]:
    """Every name a query can select: sample names, plus each family's sample names even when
    it has no samples yet (a labelled family before its first label value)."""
    names = set()
    for name, (kind, _) in families(text).items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif kind == "summary":
            names |= {f"{name}_count", f"{name}_sum"}
        elif kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            assert match, line
            names.add(match.group(0))
    return names


def samples(text: str) -> list[tuple[str, dict[str, str]]]:
    return [(s.name, dict(s.labels)) for family in text_string_to_metric_families(text)
            for s in family.samples]


def test_every_metric_in_the_dashboard_and_alerts_is_exposed(exposition: str) -> None:
    exposed = exposed_names(exposition)
    missing: dict[str, str] = {}
    for expr in all_exprs():
        for name in promql_metric_names(expr) - PROMETHEUS_GENERATED:
            if name not in exposed:
                missing.setdefault(name, expr)
    assert not missing, f"queried but not on /metrics: {missing}"


def test_metric_names_follow_prometheus_conventions(exposition: str) -> None:
    fams = families(exposition)
    own = {n: v for n, v in fams.items() if n.startswith("leadrouter_")
           and not n.endswith("_created")}  # _created: prometheus_client's companion gauges
    assert len(own) >= 15, sorted(own)
    for name, (kind, help_text) in own.items():
        assert help_text.strip(), f"{name} has no HELP"
        if kind == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
        else:
            assert not name.endswith("_total"), f"{kind} {name} must not end in _total"
        if kind == "histogram" and TIME_WORDS.search(name + " " + help_text):
            assert name.endswith("_seconds"), f"time histogram {name} must be in _seconds"
        assert not NON_BASE_UNITS.search(name), f"{name}: use base units (seconds, bytes)"


def test_labels_are_bounded_and_never_per_lead(exposition: str) -> None:
    declared = metric_labels()
    series: dict[str, int] = {}
    seen_labels: dict[str, set[str]] = {}
    for name, labels in samples(exposition):
        bad = FORBIDDEN_LABELS & set(labels)
        assert not bad, f"{name} has per-lead labels {bad}"
        series[name] = series.get(name, 0) + 1
        seen_labels.setdefault(name, set()).update(labels)
    for value in PER_LEAD_VALUES:
        assert value not in exposition, f"{value!r} leaked into /metrics"
    for name, count in series.items():
        assert count < 500, f"{name}: {count} series"
    # the traffic above produced these labelled series, so the checks saw real labels
    for name in ("leadrouter_touchpoints_processed_total", "leadrouter_transitions_total",
                 "leadrouter_dead_letters_total", "leadrouter_assignments_total",
                 "leadrouter_rep_open_leads", "leadrouter_sla_events_total",
                 "leadrouter_rejections_total", "leadrouter_consumer_lag_records",
                 "leadrouter_routing_latency_seconds_bucket"):
        assert series.get(name), f"no {name} samples: the traffic did not reach it"
    # and the live labels are the ones router/metrics.py declares
    for name, live in seen_labels.items():
        if name in declared:
            assert live == declared[name], f"{name}: live {live} != declared"


def test_label_values_the_dashboard_filters_on_appear_live(exposition: str) -> None:
    values: dict[tuple[str, str], set[str]] = {}
    for name, labels in samples(exposition):
        for label, value in labels.items():
            values.setdefault((name, label), set()).add(value)
    assert "sql" in values[("leadrouter_transitions_total", "stage")]
    assert "direct" in values[("leadrouter_transitions_total", "path")]
    assert "sla.breached" in values[("leadrouter_sla_events_total", "type")]
    assert "no_budget" in values[("leadrouter_rejections_total", "reason")]
    assert REP in values[("leadrouter_rep_open_leads", "rep_id")]
