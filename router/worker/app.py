"""The faust worker: thin adapters that feed the handlers and publish what they decide.

Agents (all at-least-once):
  qualify   leads.touchpoints + leads.profiles + the internal recycle topic (N partitions,
            co-partitioned by lead) -> router.service.qualifier
  activity  sales.activity -> validated onto the routing stream (or the dead-letter topic)
  route     the internal routing stream (ONE partition: one decider, so round-robin cursors,
            open-lead counts and queues are exact with any number of workers)
            -> router.service.routing_stage
  tick      the group leader's 1 s clock onto the routing stream (queue draining)

Commit order, per batch taken from a topic:
  1. decide, in memory (the handlers);
  2. publish every output (transitions, assignments, dead letters, routing records) and WAIT
     for the broker's acks;
  3. only then write the changed state to the table's store and its changelog, on the
     partition of the input record (never faust's "current event", which in a batch may be
     another partition's: the take() pitfall), one record batch per partition, and WAIT for
     those acks too (router.adapters.state_store);
  4. take_events acks the batch; faust commits offsets only up to acked records.
A crash before 3 replays the batch against the old state: the same outputs with the same
deterministic event ids, which consumers drop. A crash after 3 cannot lose outputs, because
they were acknowledged first. So state never runs ahead of what was published.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

import faust
from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router import __version__, metrics
from router.adapters.compacted_reader import CompactedTopicReader
from router.adapters.state_store import FaustTableState
from router.adapters.topics import Topics, compacted_topic_configs
from router.adapters.wire import REFUSAL_REASONS, decode
from router.domain.events import (
    NamedAccount,
    QualificationPath,
    RejectionReason,
    Rep,
    SlaClass,
    Stage,
)
from router.domain.rules import Rules
from router.metrics import (
    ASSIGNED_PARTITIONS,
    BATCH_EVENTS,
    BATCH_SECONDS,
    CONSUMER_LAG,
    NAMED_ACCOUNTS,
    READY,
    REGISTRY,
)
from router.service.qualifier import Output, Qualifier, Record
from router.service.routing_stage import RoutingStage, forward_activity, tick
from router.settings import Settings, bootstrap_servers
from router.worker.faust_fixes import (
    check_read_offset_generation,
    lower_fetch_wait,
    refuse_input_gaps,
    trace_commits,
)
from router.worker.inspect_views import Inspector, register
from router.worker.stall_guard import StallGuard

log = logging.getLogger(__name__)
# per-batch offset ranges, rebalances and commits: on (DEBUG) only with LEADROUTER_TRACE=1
trace = logging.getLogger("router.trace")
trace.setLevel(logging.DEBUG if os.environ.get("LEADROUTER_TRACE") == "1" else logging.INFO)

STATE_TABLE = "lead-state"
ROUTING_TABLE = "routing-state"
PROMETHEUS_MEDIA_TYPE = CONTENT_TYPE_LATEST.split(";")[0]


def broker_credentials(settings: Settings) -> Any:
    """The same connection security as kafka_client_kwargs, in faust's terms."""
    context = settings.ssl_context()
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.password(),
            ssl_context=context,
            mechanism=settings.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def new_faust_app(s: Settings, app_id: str, *, web_enabled: bool, store: str) -> faust.App:
    """The faust settings every leadrouter app shares (the benchmark's faust floor too, so
    the two are compared on equal terms)."""
    return faust.App(
        app_id,
        broker=s.broker,
        store=store,
        autodiscover=False,
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        datadir=s.data_dir,
        web_enabled=web_enabled,
        web_bind=s.web_host,
        web_host=s.web_host,
        web_port=s.web_port,
        canonical_url=s.advertised_url(),
        broker_session_timeout=s.session_timeout_seconds,
        broker_heartbeat_interval=max(0.5, s.session_timeout_seconds / 5),
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        producer_acks=-1,
        producer_linger_ms=1,
        table_standby_replicas=0,
        broker_credentials=broker_credentials(s),
    )


class RouterApp:
    """Builds the faust app and owns the pieces the web views report on."""

    def __init__(self, settings: Settings, rules: Rules) -> None:
        self.settings = settings
        self.rules = rules
        self.topics = Topics.with_prefix(settings.topic_prefix)
        self.input_topics = [
            self.topics.touchpoints, self.topics.profiles, self.topics.recycle,
            self.topics.activity, self.topics.routing,
        ]
        self.agent_started = False
        self._decay_generation: int | None = None  # the rebalance the decay index is from
        self._decay_indexed: set[int] = set()
        lower_fetch_wait(settings.fetch_max_wait_ms)
        check_read_offset_generation()
        if trace.isEnabledFor(logging.DEBUG):
            trace_commits(trace)
        refuse_input_gaps(frozenset(self.input_topics if settings.input_gaps == "refuse"
                                    else ()), log)
        self.accounts: CompactedTopicReader[NamedAccount] = CompactedTopicReader(
            bootstrap_servers(settings.broker),
            self.topics.accounts,
            lambda key, value: decode(NamedAccount, None, value, rules),
            on_change=lambda _k, _v: NAMED_ACCOUNTS.set(len(self.accounts.values)),
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            client_kwargs=settings.kafka_client_kwargs(),
        )
        self.reps: CompactedTopicReader[Rep] = CompactedTopicReader(
            bootstrap_servers(settings.broker),
            self.topics.reps,
            lambda key, value: decode(Rep, None, value, rules),
            on_change=lambda rep_id, rep: self.routing.on_roster_change(rep_id, rep),
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            client_kwargs=settings.kafka_client_kwargs(),
        )
        self.qualifier = Qualifier(
            rules, self.topics, __version__, lambda domain: domain in self.accounts.values
        )
        self.routing = RoutingStage(
            rules, self.topics, __version__, self.reps.values, self.accounts.values
        )
        self.stall_guard = StallGuard(self.input_topics)
        self.app = self._build()
        metrics.prime(
            [self.topics.touchpoints, self.topics.profiles, self.topics.activity],
            REFUSAL_REASONS,
            sorted({t.pool for t in rules.routing.territories} | {rules.routing.fallback_pool}),
            [s.value for s in Stage], [p.value for p in QualificationPath],
            [c.value for c in SlaClass], [r.value for r in RejectionReason],
        )

    def _build(self) -> faust.App:
        s = self.settings
        app = new_faust_app(s, s.app_id, web_enabled=True,
                            store="rocksdb://" if s.store == "rocksdb" else "memory://")
        table = app.Table(
            STATE_TABLE,
            default=None,
            key_type=bytes,  # bytes -> the "raw" codec: we encode state ourselves with orjson
            value_type=bytes,
            partitions=s.partitions,
            extra_topic_configs=compacted_topic_configs(s),
            help="Per-lead qualification state (router.domain.qualification.LeadState).",
        )
        inputs = app.topic(
            self.topics.touchpoints,
            self.topics.profiles,
            self.topics.recycle,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=s.partitions,
        )
        batch_size = s.batch_size
        batch_wait = s.batch_wait_ms / 1000.0
        qualifier = self.qualifier
        accounts = self.accounts

        routing_table = app.Table(
            ROUTING_TABLE,
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=1,
            extra_topic_configs=compacted_topic_configs(s),
            help="Routing state: holdings, cursors, queues (router.domain.routing).",
        )
        # raw bytes in: we decode (and dead-letter) ourselves; faust's own JSON codec would
        # drop an undecodable record silently and stop the agent
        routing_topic = app.topic(
            self.topics.routing, key_type=bytes, value_type=bytes, key_serializer="raw",
            value_serializer="raw", partitions=1, internal=False,
        )
        activity_topic = app.topic(
            self.topics.activity, key_type=bytes, value_type=bytes, key_serializer="raw",
            value_serializer="raw", partitions=s.partitions,
        )
        lead_state = FaustTableState(table)
        routing_state = FaustTableState(routing_table)
        self.table_states = (lead_state, routing_state)
        routing = self.routing
        rules = self.rules
        topics = self.topics

        async def publish(outputs: list[Output]) -> None:
            """Hand outputs to the producer and wait for the broker's acks (step 2 above)."""
            producer = app.producer
            pending = [
                await producer.send(
                    out.topic, out.key, out.value, partition=None, timestamp=None, headers=None
                )
                for out in outputs
            ]
            if pending:
                await asyncio.gather(*pending)

        def owned_records(events: Any) -> list[Record]:
            """Records of partitions this worker still owns. A take() buffer can hold events
            fetched before a rebalance moved their partition away; processing them here too
            would write state for a partition another worker now owns ("zombie" changelog
            writes that a later recovery would replay over newer state). The new owner
            replays them from the committed offset instead."""
            owned = app.consumer.assignment()
            return [
                Record(e.message.topic, e.message.partition, e.message.offset, e.message.key,
                       e.message.value)
                for e in events
                if e.message.tp in owned
            ]

        def trace_batch(agent: str, events: Any, records: list[Record]) -> None:
            """LEADROUTER_TRACE=1: offset ranges per partition of every batch (chaos forensics)."""
            ranges: dict[str, list[int]] = {}
            for e in events:
                m = e.message
                ranges.setdefault(f"{m.topic}[{m.partition}]", []).append(m.offset)
            kept = {(r.topic, r.partition, r.offset) for r in records}
            trace.debug("batch", extra={
                "agent": agent, "generation": app.consumer_generation_id,
                "ranges": {k: f"{min(v)}-{max(v)}/{len(v)}" for k, v in sorted(ranges.items())},
                "dropped": len(events) - len(kept)})

        def still_owned(topic: str, partition: int) -> bool:
            return TP(topic, partition) in app.consumer.assignment()

        def load_lead(partition_of: dict[bytes | None, int], key: bytes) -> bytes | None:
            return lead_state.get(partition_of[key], key)

        @app.agent(inputs, name="qualify")
        async def qualify(stream: Any) -> None:
            await accounts.caught_up.wait()
            self.agent_started = True
            async for events in stream.take_events(batch_size, within=batch_wait):
                started = time.perf_counter()
                records = owned_records(events)
                if trace.isEnabledFor(logging.DEBUG):
                    trace_batch("qualify", events, records)
                if not records:
                    continue
                # a lead's state lives in its input record's partition (first one wins)
                partition_of = {r.key: r.partition for r in reversed(records)}
                result = qualifier.process(records, datetime.now(UTC),
                                           partial(load_lead, partition_of))
                await publish(result.outputs)
                owned = {tp.partition for tp in app.consumer.assignment()
                         if tp.topic == topics.touchpoints}
                for key, (partition, value) in result.state_writes.items():
                    if partition not in owned:
                        trace.debug("state write skipped (revoked)",
                                    extra={"partition": partition})
                        continue  # revoked while publishing: the new owner replays it
                    lead_state.put(partition, key, value)
                await lead_state.flush()
                BATCH_EVENTS.observe(len(records))
                BATCH_SECONDS.observe(time.perf_counter() - started)

        @app.agent(activity_topic, name="activity")
        async def activity(stream: Any) -> None:
            async for events in stream.take_events(batch_size, within=batch_wait):
                now = datetime.now(UTC)
                await publish([
                    forward_activity(r, rules, topics, now, __version__)
                    for r in owned_records(events)
                ])

        @app.agent(routing_topic, name="route")
        async def route(stream: Any) -> None:
            await accounts.caught_up.wait()
            await self.reps.caught_up.wait()
            async for events in stream.take_events(batch_size, within=batch_wait):
                records = owned_records(events)
                if not records or (routing.state is None and not still_owned(topics.routing, 0)):
                    continue
                result = routing.process(records, datetime.now(UTC),
                                         lambda: dict(routing_state.items(0)))
                await publish(result.outputs)
                if not still_owned(topics.routing, 0):
                    routing.forget()  # revoked meanwhile: reload if it comes back
                    continue
                for key, value in result.state_writes.items():
                    routing_state.put(0, key, value)
                await routing_state.flush()

        @app.on_partitions_assigned.connect
        async def trace_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
            trace.debug("assigned", extra={
                "generation": app.consumer_generation_id,
                "partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)})

        @app.on_partitions_revoked.connect
        async def forget_routing_state(sender: Any, revoked: Any, **kwargs: Any) -> None:
            trace.debug("revoked", extra={
                "generation": app.consumer_generation_id,
                "partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked)})
            # reloaded from the recovered table when this worker gets the partition again
            if any(tp.topic == topics.routing for tp in revoked):
                routing.forget()

        @app.timer(interval=1.0, on_leader=True)
        async def clock() -> None:
            await app.producer.send(topics.routing, b"tick", tick(datetime.now(UTC)),
                                    partition=None, timestamp=None, headers=None)

        @app.timer(interval=1.0)
        async def decay_mqls() -> None:
            await self.decay_tick()

        guard = self.stall_guard

        @app.timer(interval=5.0)
        async def guard_partitions() -> None:
            guard.check(app)
            self.report_lag()
            READY.set(1 if self.readiness()["ready"] else 0)  # for scrapes between probes

        @app.timer(interval=2.0)
        async def guard_commits() -> None:
            await guard.check_commits(app)

        @app.task
        async def load_reps() -> None:
            await self.reps.run()

        @app.task
        async def load_accounts() -> None:
            await accounts.run()

        @app.page("/health")
        async def health(web: Any, request: Any) -> Any:
            return web.json({"status": "alive", "version": __version__})

        @app.page("/ready")
        async def ready(web: Any, request: Any) -> Any:
            state = self.readiness()
            READY.set(1 if state["ready"] else 0)
            return web.json(state, status=200 if state["ready"] else 503)

        register(app, Inspector(self, lead_state, routing_state))

        @app.page("/metrics")
        async def metrics(web: Any, request: Any) -> Any:
            # aiohttp wants the charset apart from the media type
            return web.bytes(generate_latest(REGISTRY), content_type=PROMETHEUS_MEDIA_TYPE)

        return app

    async def decay_tick(self) -> None:
        """SPEC §2.2 MQL decay, on this worker's partitions only (every worker runs this timer).

        The deadlines come from the qualifier's index, refilled from the stored states after a
        rebalance (a partition may have changed hands meanwhile); due leads get a decay record
        on their own recycle partition, which the qualify agent applies (see
        Qualifier.decay_records for why the timer does not write state itself).
        """
        app, qualifier = self.app, self.qualifier
        if self.rules.decay_seconds is None or not self.agent_started:
            return
        if (not app.tables.recovery.completed.is_set() or getattr(app, "rebalancing", False)
                or getattr(app, "in_recovery", False)):
            return  # states being restored: an index filled now would miss leads
        owned = {tp.partition for tp in app.consumer.assignment()
                 if tp.topic == self.topics.touchpoints}
        generation = app.consumer_generation_id
        if generation != self._decay_generation:
            qualifier.decay_index.keep_partitions(owned)
            self._decay_indexed = set()
            self._decay_generation = generation
        for partition in sorted(owned - self._decay_indexed):
            found = qualifier.index_partition(partition, self.table_states[0].items(partition))
            self._decay_indexed.add(partition)
            log.info("decay index filled", extra={"partition": partition, "mqls": found})
            await asyncio.sleep(0)  # let the agents run between partitions
        records = qualifier.decay_records(datetime.now(UTC), owned)
        if records:
            pending = [await app.producer.send(r.topic, r.key, r.value, partition=r.partition,
                                               timestamp=None, headers=None) for r in records]
            await asyncio.gather(*pending)
            log.info("decay records sent", extra={"leads": len(records)})

    def report_lag(self) -> None:
        """Lag per assigned input partition: what a `lag growing` alert watches. Uses the
        fetch high watermark (right on Tansu too) and faust's last committed offset."""
        consumer: Any = self.app.consumer
        try:
            assigned = consumer.assignment()
        except Exception:  # not started yet
            return
        ASSIGNED_PARTITIONS.set(len(assigned))
        inputs = set(self.input_topics)
        CONSUMER_LAG.clear()  # revoked partitions must not keep reporting an old lag
        for tp in assigned:
            if tp.topic not in inputs:
                continue
            try:
                highwater = consumer.highwater(tp)
            except Exception:
                continue
            if highwater is None:
                continue
            committed = consumer._committed_offset.get(tp) or 0
            CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - committed))

    @property
    def changelog_records_restored(self) -> dict[str, int]:
        return {state.table.name: state.restored for state in self.table_states}

    def readiness(self) -> dict[str, Any]:
        app = self.app
        recovered = bool(app.tables.recovery.completed.is_set())
        rebalancing = bool(getattr(app, "rebalancing", False))
        try:
            assigned = len(app.consumer.assignment())
        except Exception:  # consumer not started yet
            assigned = 0
        checks = {
            "partitions_assigned": assigned,
            "state_recovered": recovered,
            "rebalancing": rebalancing,
            "named_accounts_loaded": self.accounts.caught_up.is_set(),
            "named_accounts": len(self.accounts.values),
            "roster_loaded": self.reps.caught_up.is_set(),
            "reps": len(self.reps.values),
            "consuming": self.agent_started,
            "store": self.settings.store,
            "changelog_records_restored": self.changelog_records_restored,
            "partitions_unstalled": self.stall_guard.unstalled,
            "commit_stalls_repaired": self.stall_guard.commit_stalls_repaired,
        }
        ready = (
            recovered
            and not rebalancing
            and self.accounts.caught_up.is_set()
            and self.reps.caught_up.is_set()
            and self.agent_started
        )
        return {"ready": ready, "rules_version": self.rules.version, **checks}
