"""The worker: the handlers on the partition processor, plus the web server and the timers.

Stages (router.worker.pipeline, one consumer-group member, every input path):
  leads    partition p of leads.touchpoints + leads.profiles + the recycle topic
           (-> router.service.qualifier, lead state in the "lead-state" store) and of
           sales.activity (validated onto the routing stream, or dead-lettered), with the
           misplaced records forwarded: router.service.leads_stage; co-partitioned by lead,
           so one task, one store, one transaction per partition and batch
  routing  the internal routing stream (ONE partition: one decider, so round-robin cursors,
           open-lead counts and queues are exact with any number of workers)
           -> router.service.routing_stage, state in memory + the "routing-state" changelog;
           with exactly-once the owner applies its own leads tasks' route requests in the
           transaction that publishes them (pipeline/processor.py `_direct`)

Timers: the routing partition's owner puts a clock tick on the routing stream every second
(queue draining, SLA clocks), every worker sends decay records for the MQLs of the lead
partitions it owns, and gauges are refreshed.

Commit order: see router.worker.pipeline.processor (exactly-once: outputs, changelog and
offsets in one transaction per task and batch; at-least-once: outputs acked, then changelog
acked, then offsets committed, with deterministic output ids).

The web server is plain aiohttp, and its views read the processor's stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router import __version__, metrics
from router.adapters.compacted_reader import CompactedTopicReader
from router.adapters.topics import Topics
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
    CONSUMER_LAG,
    NAMED_ACCOUNTS,
    READY,
    REGISTRY,
)
from router.records import Output, Record, StageResult
from router.service.leads_stage import LeadsStage
from router.service.qualifier import Qualifier
from router.service.routing_stage import RoutingStage, applied_copy, tick
from router.settings import Settings, bootstrap_servers
from router.worker.inspect_views import Inspector, register
from router.worker.pipeline.assignor import CoPartitionedAssignor
from router.worker.pipeline.core import LEADS, ROUTING
from router.worker.pipeline.processor import PartitionProcessor
from router.worker.pipeline.stage import DirectInput, StageSpec
from router.worker.pipeline.store import StateView

log = logging.getLogger(__name__)

STATE_TABLE = "lead-state"
ROUTING_TABLE = "routing-state"
PROMETHEUS_MEDIA_TYPE = CONTENT_TYPE_LATEST.split(";")[0]
CLOCK_SECONDS = 1.0
GAUGE_SECONDS = 5.0


class StageStores:
    """One stage's stores by partition, as the views and the decay scan read them."""

    def __init__(self, processor: PartitionProcessor, stage: str, table: str) -> None:
        self.processor = processor
        self.stage = stage
        self.name = table

    def get(self, partition: int, key: bytes) -> bytes | None:
        store = self.processor.store(self.stage, partition)
        return store.get(key) if store is not None else None

    def items(self, partition: int) -> list[tuple[bytes, bytes]]:
        store = self.processor.store(self.stage, partition)
        return list(store.items()) if store is not None else []


class RouterApp:
    """Builds the processor and owns the pieces the web views report on."""

    def __init__(self, settings: Settings, rules: Rules) -> None:
        self.settings = settings
        self.rules = rules
        self.topics = topics = Topics.with_prefix(settings.topic_prefix)
        # co-partitioned by lead: one task per partition consumes all of these
        self.lead_inputs = (topics.touchpoints, topics.profiles, topics.recycle, topics.activity,
                            topics.repartition_touchpoints, topics.repartition_profiles)
        self.input_topics = [*self.lead_inputs, topics.routing]
        self._decay_generation: int | None = None  # the assignment the decay index is from
        self._decay_indexed: set[int] = set()
        self.accounts: CompactedTopicReader[NamedAccount] = CompactedTopicReader(
            bootstrap_servers(settings.broker),
            topics.accounts,
            lambda key, value: decode(NamedAccount, None, value, rules),
            on_change=lambda _k, _v: NAMED_ACCOUNTS.set(len(self.accounts.values)),
            fetch_max_wait_ms=settings.fetch_wait_ms(),
            client_kwargs=settings.kafka_client_kwargs(),
        )
        self.reps: CompactedTopicReader[Rep] = CompactedTopicReader(
            bootstrap_servers(settings.broker),
            topics.reps,
            lambda key, value: decode(Rep, None, value, rules),
            on_change=lambda rep_id, rep: self.routing.on_roster_change(rep_id, rep),
            fetch_max_wait_ms=settings.fetch_wait_ms(),
            client_kwargs=settings.kafka_client_kwargs(),
        )
        self.qualifier = Qualifier(
            rules, topics, __version__, lambda domain: domain in self.accounts.values
        )
        self.leads = LeadsStage(rules, topics, __version__, self.qualifier,
                                partitions=settings.partitions,
                                repartition=settings.misplaced_records == "repartition")
        self.routing = RoutingStage(
            rules, topics, __version__, self.reps.values, self.accounts.values
        )
        exactly_once = settings.processing_guarantee == "exactly_once"
        self.assignor = CoPartitionedAssignor(
            settings.advertised_url(),
            [*self.lead_inputs], topics.routing)
        self.processor = PartitionProcessor(
            settings,
            [StageSpec(LEADS, self.lead_inputs,
                       f"{settings.app_id}-{STATE_TABLE}-changelog", STATE_TABLE,
                       self._leads, settings.partitions),
             StageSpec(ROUTING, (topics.routing,),
                       f"{settings.app_id}-{ROUTING_TABLE}-changelog", ROUTING_TABLE,
                       self._route, 1, forget=lambda _p: self.routing.forget(),
                       direct=DirectInput(self._route_direct, applied_copy))],
            exactly_once=exactly_once,
            # Tansu has no transactions (and no isolation): read what is there
            read_committed=settings.broker_quirks != "tansu",
            assignor=self.assignor)
        self.lead_state = StageStores(self.processor, LEADS, STATE_TABLE)
        self.routing_state = StageStores(self.processor, ROUTING, ROUTING_TABLE)
        self.inspector = Inspector(self, self.lead_state, self.routing_state)
        metrics.prime(
            [topics.touchpoints, topics.profiles, topics.activity],
            REFUSAL_REASONS,
            sorted({t.pool for t in rules.routing.territories} | {rules.routing.fallback_pool}),
            [s.value for s in Stage], [p.value for p in QualificationPath],
            [c.value for c in SlaClass], [r.value for r in RejectionReason],
        )

    # ---- the stages' handlers (pure decisions; the processor writes them) --------------------

    def _leads(self, partition: int, records: list[Record], store: StateView,
               now: datetime) -> StageResult:
        return self.leads.process(records, now, store.get)

    def _route(self, partition: int, records: list[Record], store: StateView,
               now: datetime) -> StageResult:
        return self.routing.process(records, now, lambda: dict(store.items()))

    def _route_direct(self, partition: int, records: list[Record], store: StateView,
                      now: datetime) -> StageResult:
        return self.routing.process(records, now, lambda: dict(store.items()), direct=True)

    # ---- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Until SIGTERM/SIGINT: readers, then the processor, the web server and the timers."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        runner = web.AppRunner(self.web_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.settings.web_host, self.settings.web_port).start()
        readers = [asyncio.create_task(self.accounts.run(), name="accounts"),
                   asyncio.create_task(self.reps.run(), name="reps")]
        tasks: list[asyncio.Task[None]] = []
        try:
            # decide nothing before the named accounts and the roster are known
            await _until(stopping, self.accounts.caught_up.wait(), self.reps.caught_up.wait())
            if stopping.is_set():
                return
            await self.processor.start()
            tasks = [
                asyncio.create_task(self.processor.run(stopping), name="processor"),
                asyncio.create_task(_every(CLOCK_SECONDS, stopping, self.clock), name="clock"),
                asyncio.create_task(_every(CLOCK_SECONDS, stopping, self.decay_tick),
                                    name="decay"),
                asyncio.create_task(_every(GAUGE_SECONDS, stopping, self.gauges), name="gauges"),
            ]
            done, _ = await asyncio.wait([*tasks, asyncio.create_task(stopping.wait())],
                                         return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                if finished in tasks and finished.exception() is not None:
                    raise finished.exception()  # type: ignore[misc]
        finally:
            stopping.set()
            for t in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(t, 10)
            if self.processor.started:
                await self.processor.stop()
            self.accounts.stop()
            self.reps.stop()
            for r in readers:
                r.cancel()
            await self.inspector.close()
            await runner.cleanup()

    async def clock(self) -> None:
        """The routing owner's clock onto the routing stream: in the stream, so ticks are
        ordered with the SQLs and activity they drain queues for."""
        if self.processor.owns(ROUTING, 0):
            await self._send([Output(self.topics.routing, b"tick", tick(datetime.now(UTC)),
                                     partition=0)])

    async def decay_tick(self) -> None:
        """SPEC §2.2 MQL decay, for the lead partitions this worker owns and has restored.

        The deadlines come from the qualifier's index, refilled from the stored states after
        an assignment (a partition may have changed hands meanwhile); due leads get a decay
        record on their own recycle partition, which the leads stage applies (see
        Qualifier.decay_records for why the timer does not write state itself).
        """
        qualifier, core = self.qualifier, self.processor.core
        if self.rules.decay_seconds is None or not core.settled:
            return  # states being restored: an index filled now would miss leads
        owned = core.active_partitions(LEADS)
        if core.generation != self._decay_generation:
            qualifier.decay_index.keep_partitions(owned)
            self._decay_indexed = set()
            self._decay_generation = core.generation
        for partition in sorted(owned - self._decay_indexed):
            found = qualifier.index_partition(partition, self.lead_state.items(partition))
            self._decay_indexed.add(partition)
            log.info("decay index filled", extra={"partition": partition, "mqls": found})
            await asyncio.sleep(0)  # let the processor run between partitions
        records = qualifier.decay_records(datetime.now(UTC), owned)
        if records:
            await self._send(records)
            log.info("decay records sent", extra={"leads": len(records)})

    async def _send(self, outputs: list[Output]) -> None:
        """Timer records, outside any transaction: both are safe to repeat (a tick drains
        nothing twice, a decay record carries the clock it was decided on)."""
        producer = self.processor.producer
        acks = [await producer.send(o.topic, o.value, key=o.key, partition=o.partition)
                for o in outputs]
        await asyncio.gather(*acks)

    async def gauges(self) -> None:
        self.report_lag()
        READY.set(1 if self.readiness()["ready"] else 0)  # for scrapes between probes

    def report_lag(self) -> None:
        """Lag per owned input partition: fetch high watermark minus the processed position
        (what a `lag growing` alert watches)."""
        consumer = self.processor.consumer
        positions = self.processor.positions()
        ASSIGNED_PARTITIONS.set(len(consumer.assignment()))
        CONSUMER_LAG.clear()  # revoked partitions must not keep reporting an old lag
        for tp, position in positions.items():
            with contextlib.suppress(Exception):
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(
                        max(0, highwater - position))

    def readiness(self) -> dict[str, Any]:
        processor = self.processor
        core = processor.core
        try:
            assigned = len(processor.consumer.assignment()) if processor.started else 0
        except Exception:  # consumer not started yet
            assigned = 0
        recovered = processor.assigned_once and core.settled
        checks = {
            "partitions_assigned": assigned,
            "state_recovered": recovered,
            "rebalancing": core.rebalancing,
            "named_accounts_loaded": self.accounts.caught_up.is_set(),
            "named_accounts": len(self.accounts.values),
            "roster_loaded": self.reps.caught_up.is_set(),
            "reps": len(self.reps.values),
            "consuming": processor.started,
            "store": self.settings.store,
            "processing_guarantee": self.settings.processing_guarantee,
            "changelog_records_restored": dict(processor.restored),
            "batches_abandoned": dict(processor.aborted),
        }
        ready = (recovered and self.accounts.caught_up.is_set() and self.reps.caught_up.is_set()
                 and processor.started)
        return {"ready": ready, "rules_version": self.rules.version, **checks}

    # ---- web ---------------------------------------------------------------------------------

    def web_app(self) -> web.Application:
        app = web.Application()

        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "alive", "version": __version__})

        async def ready(request: web.Request) -> web.Response:
            state = self.readiness()
            READY.set(1 if state["ready"] else 0)
            return web.json_response(state, status=200 if state["ready"] else 503)

        async def metrics_page(request: web.Request) -> web.Response:
            # aiohttp wants the charset apart from the media type
            return web.Response(body=generate_latest(REGISTRY),
                                content_type=PROMETHEUS_MEDIA_TYPE, charset="utf-8")

        app.router.add_get("/health", health)
        app.router.add_get("/ready", ready)
        app.router.add_get("/metrics", metrics_page)
        register(app, self.inspector)
        return app


async def _until(stopping: asyncio.Event, *waits: Awaitable[Any]) -> None:
    """Wait for all of `waits`, or for `stopping`."""
    gathered = asyncio.ensure_future(asyncio.gather(*waits))
    stop = asyncio.create_task(stopping.wait())
    await asyncio.wait([gathered, stop], return_when=asyncio.FIRST_COMPLETED)
    for f in (gathered, stop):
        f.cancel()


async def _every(seconds: float, stopping: asyncio.Event,
                 job: Callable[[], Awaitable[None]]) -> None:
    """Run `job` every `seconds` until `stopping`; a failing run is logged, not fatal."""
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)
        if stopping.is_set():
            return
        try:
            await job()
        except Exception:
            log.exception("timer failed", extra={"timer": getattr(job, "__name__", "?")})
