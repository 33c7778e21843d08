"""Topic names (SPEC §2, under the configured prefix) and creating them on start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from router.adapters.broker_kind import BrokerIdentity, identify
from router.settings import Settings, bootstrap_servers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topics:
    touchpoints: str
    profiles: str
    reps: str
    accounts: str
    activity: str
    transitions: str
    assignments: str
    sla: str
    deadletter: str
    # internal: every routing input (SQLs, sales activity, clock ticks) in one ordered stream
    routing: str
    # internal: routing -> qualification, "sales recycled this lead" (co-partitioned by lead)
    recycle: str
    # internal: touchpoints and profiles that arrived off their lead's partition (a producer
    # with another partitioner), forwarded to it (router/service/partitioning.py)
    repartition_touchpoints: str
    repartition_profiles: str

    @classmethod
    def with_prefix(cls, prefix: str = "") -> Topics:
        return cls(
            touchpoints=f"{prefix}leads.touchpoints",
            profiles=f"{prefix}leads.profiles",
            reps=f"{prefix}routing.reps",
            accounts=f"{prefix}routing.accounts",
            activity=f"{prefix}sales.activity",
            transitions=f"{prefix}leads.transitions",
            assignments=f"{prefix}leads.assignments",
            sla=f"{prefix}leads.sla",
            deadletter=f"{prefix}leads.deadletter",
            routing=f"{prefix}leadrouter-routing",
            recycle=f"{prefix}leadrouter-recycle",
            repartition_touchpoints=f"{prefix}leadrouter-repartition-touchpoints",
            repartition_profiles=f"{prefix}leadrouter-repartition-profiles",
        )

    @property
    def repartitioned(self) -> dict[str, str]:
        """Source topic -> the internal topic its misplaced records are forwarded through."""
        return {self.touchpoints: self.repartition_touchpoints,
                self.profiles: self.repartition_profiles}

    @property
    def compacted(self) -> frozenset[str]:
        return frozenset({self.reps, self.accounts})

    @property
    def inputs(self) -> frozenset[str]:
        """The topics other systems write to (SPEC §2.1)."""
        return frozenset({self.touchpoints, self.profiles, self.reps, self.accounts,
                          self.activity})

    def configs(self, name: str, settings: Settings) -> dict[str, str]:
        configs = compacted_topic_configs(settings) if name in self.compacted else {}
        if name in self.inputs:
            configs["max.message.bytes"] = str(INPUT_MAX_MESSAGE_BYTES)
        return configs

    def all(self) -> list[str]:
        return [
            self.touchpoints,
            self.profiles,
            self.reps,
            self.accounts,
            self.activity,
            self.transitions,
            self.assignments,
            self.sla,
            self.deadletter,
            self.routing,
            self.recycle,
            self.repartition_touchpoints,
            self.repartition_profiles,
        ]

    def partitions(self, name: str, default: int) -> int:
        """Routing decisions are serialized in one partition (see router/domain/routing.py)."""
        return 1 if name == self.routing else default


# SPEC §6 dead-letters input values over 1 MiB with a reason. Kafka's default limit (1 MiB)
# would instead refuse them at the producer, where nobody downstream sees them; inputs up to
# 4 MiB therefore reach the router and are refused there, visibly.
INPUT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class BrokerUnreachable(RuntimeError):
    """No broker answered at the configured URL within the wait."""


async def _admin(settings: Settings) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers(settings.broker), request_timeout_ms=10_000,
        **settings.kafka_client_kwargs(),
    )
    await admin.start()
    return admin


async def connect_admin(settings: Settings) -> AIOKafkaAdminClient:
    """Connect, retrying until `broker_wait_seconds`; the error names the URL that was tried."""
    deadline = time.monotonic() + settings.broker_wait_seconds
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _admin(settings)
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            if time.monotonic() >= deadline:
                raise BrokerUnreachable(
                    f"cannot reach the Kafka broker at {settings.broker}"
                    f" (bootstrap {', '.join(bootstrap_servers(settings.broker))}) after"
                    f" {settings.broker_wait_seconds:.0f} s and {attempt} attempts: {exc}."
                    " Start it (`leadrouter broker`) or set LEADROUTER_BROKER / --broker."
                ) from None
            log.warning(
                "broker not reachable yet, retrying",
                extra={"broker": settings.broker, "attempt": attempt, "error": str(exc)},
            )
            await asyncio.sleep(min(2.0, 0.2 * attempt))


class NoController(BrokerUnreachable):
    """The broker answered, but its metadata named no controller within the wait."""


async def wait_for_controller(admin: AIOKafkaAdminClient, timeout: float, where: str,
                              poll: float = 0.2) -> None:
    """Refresh the admin client's metadata until it lists brokers and a controller.

    aiokafka's create_topics sends to `cluster.controller` and fails with `'NoneType' object
    has no attribute 'nodeId'` when it is None, which it is while a starting KRaft cluster
    still answers Metadata with no brokers (aiokafka then keeps its previous, empty view)."""
    deadline = time.monotonic() + timeout
    while True:
        cluster = admin._client.cluster  # aiokafka's admin has no public view of its metadata
        if cluster.brokers() and cluster.controller is not None:
            return
        if time.monotonic() >= deadline:
            known = sorted(b.nodeId for b in cluster.brokers())
            raise NoController(
                f"the Kafka broker at {where} answered, but its metadata named no controller"
                f" within {timeout:.0f} s (brokers known: {known or 'none'}), so no topic can"
                " be created; check that the cluster's nodes have all started and formed a"
                " quorum (their logs say \"Kafka Server started\")")
        await admin._client.force_metadata_update()
        await asyncio.sleep(poll)


async def prepare_broker(settings: Settings, topics: Topics) -> tuple[BrokerIdentity, list[str]]:
    """Who the broker is (so the worker can switch on its workarounds), and the SPEC topics
    created because they did not exist yet."""
    admin = await connect_admin(settings)
    try:
        identity = await identify(admin)
        return identity, await _ensure_topics(admin, settings, topics)
    finally:
        await admin.close()


async def ensure_topics(settings: Settings, topics: Topics) -> list[str]:
    """Create the SPEC topics that do not exist yet; returns the names created."""
    admin = await connect_admin(settings)
    try:
        return await _ensure_topics(admin, settings, topics)
    finally:
        await admin.close()


async def _ensure_topics(admin: AIOKafkaAdminClient, settings: Settings, topics: Topics
                         ) -> list[str]:
    existing = set(await admin.list_topics())
    missing = [t for t in topics.all() if t not in existing]
    if not missing:
        return []
    new = [
        NewTopic(
            name=name,
            num_partitions=topics.partitions(name, settings.partitions),
            replication_factor=settings.replication_factor,
            topic_configs=topics.configs(name, settings),
        )
        for name in missing
    ]
    await wait_for_controller(admin, settings.broker_wait_seconds, settings.broker)
    with contextlib.suppress(TopicAlreadyExistsError):  # another worker was faster
        await admin.create_topics(new)
    return missing


def compacted_topic_configs(settings: Settings) -> dict[str, str]:
    """Configs for the compacted topics the router creates (roster, accounts, changelogs).

    Kafka never cleans a partition's active segment, and its default segment lasts 7 days,
    so without a shorter one a week of updates per key is replayed on every restore. One
    hour bounds that; a dirty ratio of 0.1 (default 0.5) keeps restores close to one record
    per live key; tombstones stay a day so that a reader catching up still sees removals.
    """
    return {
        "cleanup.policy": "compact",
        "segment.ms": str(settings.compacted_segment_ms),
        "min.cleanable.dirty.ratio": "0.1",
        "delete.retention.ms": str(24 * 3600 * 1000),
    }
