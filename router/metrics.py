"""Prometheus metrics (SPEC §8): base units, `_total` counters, bounded label sets.

Labels only ever take values from closed sets (touchpoint types, stages, paths, refusal
reasons, topic names), so a hostile producer cannot blow up the series count.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

REGISTRY = CollectorRegistry(auto_describe=True)

TOUCHPOINTS = Counter(
    "leadrouter_touchpoints_processed_total",
    "Touchpoints folded into lead state, by type (repeats included).",
    ["type"],
    registry=REGISTRY,
)
PROFILES = Counter(
    "leadrouter_profiles_processed_total",
    "Lead profiles processed.",
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "leadrouter_transitions_total",
    "Stage transitions emitted, by stage and path.",
    ["stage", "path"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "leadrouter_dead_letters_total",
    "Inputs refused and sent to the dead-letter topic, by source topic and reason.",
    ["topic", "reason"],
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "leadrouter_batch_processing_seconds",
    "Time to process one batch of input events.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
BATCH_EVENTS = Histogram(
    "leadrouter_batch_events",
    "Events per processed batch.",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500),
    registry=REGISTRY,
)
NAMED_ACCOUNTS = Gauge(
    "leadrouter_named_accounts",
    "Named accounts currently known to this worker.",
    registry=REGISTRY,
)
READY = Gauge(
    "leadrouter_ready",
    "1 when this worker's partitions are assigned, recovered and consuming.",
    registry=REGISTRY,
)
ASSIGNMENTS = Counter(
    "leadrouter_assignments_total",
    "Routing outcomes, by pool, rule (or 'queued') and event type.",
    ["pool", "rule", "type"],
    registry=REGISTRY,
)
ROUTING_LATENCY = Histogram(
    "leadrouter_routing_latency_seconds",
    "From the triggering input being processed to the assignment being emitted.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)
OPEN_LEADS = Gauge(
    "leadrouter_rep_open_leads",
    "Open leads per rep (assigned and not yet dispositioned), on the routing worker.",
    ["rep_id"],
    registry=REGISTRY,
)
QUEUED_LEADS = Gauge(
    "leadrouter_pool_queued_leads",
    "Leads waiting in a pool's queue for an eligible rep, on the routing worker.",
    ["pool"],
    registry=REGISTRY,
)
SLA_OUTCOMES = Counter(
    "leadrouter_sla_events_total",
    "SLA warnings, breaches and met first touches, by SLA class and pool.",
    ["type", "sla_class", "pool"],
    registry=REGISTRY,
)
RESPONSE_SECONDS = Histogram(
    "leadrouter_first_touch_response_seconds",
    "From assignment (or queueing) to the holder's first touch, wall-clock seconds.",
    ["sla_class"],
    buckets=(30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400),
    registry=REGISTRY,
)
REJECTIONS = Counter(
    "leadrouter_rejections_total",
    "Leads sales rejected, by structured reason.",
    ["reason"],
    registry=REGISTRY,
)
RECYCLED = Counter(
    "leadrouter_recycled_total",
    "Leads sent back to nurture, by what recycled them.",
    ["because"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "leadrouter_consumer_lag_records",
    "Records on an assigned input partition not yet committed by this worker"
    " (high watermark minus committed offset).",
    ["topic", "partition"],
    registry=REGISTRY,
)
ASSIGNED_PARTITIONS = Gauge(
    "leadrouter_assigned_partitions",
    "Input and table partitions assigned to this worker.",
    registry=REGISTRY,
)
# process_* (resident memory, CPU seconds, open fds, start time) for the same registry
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
BATCHES_ABANDONED = Counter(
    "leadrouter_batches_abandoned_total",
    "Batches not committed and processed again (router.worker.pipeline.processor), by reason:"
    " aborted (transaction aborted), fenced (another worker owns the partition now),"
    " commit_unknown (outcome unknown: state restored again), send_failed (at-least-once).",
    ["reason"],
    registry=REGISTRY,
)
ABANDON_REASONS = ("aborted", "fenced", "commit_unknown", "send_failed")
CHANGELOG_RESTORED = Counter(
    "leadrouter_changelog_records_restored_total",
    "Changelog records replayed into local state at start or after a rebalance, by table.",
    ["table"],
    registry=REGISTRY,
)


def prime(input_topics: list[str], refusal_reasons: tuple[str, ...], pools: list[str],
          stages: list[str], paths: list[str], sla_classes: list[str],
          rejection_reasons: list[str]) -> None:
    """Create every labelled counter series at 0 on start. A series that first appears at 1
    hides that first increment from `increase()`, so the first dead letter or breach after a
    restart would not alert. All label sets here are closed (config or enums)."""
    for topic in input_topics:
        for reason in refusal_reasons:
            DEAD_LETTERS.labels(topic, reason)
    for stage in stages:
        for path in [*paths, "none"]:
            TRANSITIONS.labels(stage, path)
    for kind in ("sla.warning", "sla.breached", "sla.met"):
        for sla_class in sla_classes:
            for pool in pools:
                SLA_OUTCOMES.labels(kind, sla_class, pool)
    for reason in rejection_reasons:
        REJECTIONS.labels(reason)
    for reason in ABANDON_REASONS:
        BATCHES_ABANDONED.labels(reason)
MISPLACED_RECORDS = Counter(
    "leadrouter_misplaced_records_total",
    "Input records whose key does not hash (murmur2, Kafka's default partitioner) to the"
    " partition they arrived on, by topic: their producer uses another partitioner"
    " (README, Producers).",
    ["topic"],
    registry=REGISTRY,
)
