"""The consumer group's assignor: core.plan_assignment in aiokafka's terms.

Each member's join metadata carries its web URL and what it holds (stickiness); the leader's
plan goes back to every member with the whole owner map in the assignment's user data, so any
worker can forward a lead view to the lead's owner (router.worker.inspect_views) without a
lookup of its own. Co-partitioning is the point: partition p of touchpoints, profiles, recycle
and activity always go to the same member, the one holding lead state p.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from router.worker.pipeline.core import Member, plan_assignment

log = logging.getLogger(__name__)


class CoPartitionedAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """An instance (not the class, as aiokafka's own assignors are): it holds this member's
    URL, what it owns, and the owner map of the last assignment."""

    name = "leadrouter-copartitioned"
    version = 1

    def __init__(self, url: str, lead_topics: Iterable[str], routing_topic: str) -> None:
        self.url = url
        self.lead_topics = tuple(lead_topics)
        self.routing_topic = routing_topic
        self.owned: frozenset[int] = frozenset()
        self.routing = False
        self.lead_owners: dict[int, str] = {}
        self.routing_owner: str | None = None

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        user_data = orjson.dumps({"url": self.url, "owned": sorted(self.owned),
                                  "routing": self.routing})
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), user_data)

    def assign(self, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
               ) -> dict[str, ConsumerProtocolMemberAssignment]:
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in self.lead_topics}
        partitions = min(counts.values()) if counts else 0
        if len(set(counts.values())) > 1:
            log.error("input topics are not co-partitioned: only the partitions all of them"
                      " have are consumed; give them the same partition count",
                      extra={"partitions": counts})
        decoded = {}
        for member_id, meta in members.items():
            try:
                info = orjson.loads(meta.user_data or b"{}")
            except orjson.JSONDecodeError:
                info = {}
            decoded[member_id] = Member(member_id, str(info.get("url", "")),
                                        frozenset(int(p) for p in info.get("owned", ())),
                                        bool(info.get("routing", False)))
        plan = plan_assignment(list(decoded.values()), partitions)
        user_data = orjson.dumps(plan.owners(decoded))
        out = {}
        for member_id in members:
            lead_partitions = plan.leads[member_id]
            assignment = [(t, lead_partitions) for t in self.lead_topics if lead_partitions]
            if plan.routing == member_id:
                assignment.append((self.routing_topic, [0]))
            out[member_id] = ConsumerProtocolMemberAssignment(
                self.version, sorted(assignment), user_data)
        return out

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        owners = orjson.loads(assignment.user_data or b"{}")
        self.lead_owners = {int(p): url for p, url in owners.get("leads", {}).items()}
        self.routing_owner = owners.get("routing")
        mine = assignment.partitions()
        self.owned = frozenset(tp.partition for tp in mine if tp.topic in self.lead_topics)
        self.routing = any(tp.topic == self.routing_topic for tp in mine)
