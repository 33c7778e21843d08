"""Broker faults for chaos runs on the three-node Apache Kafka cluster.

Which node to hurt is asked of the cluster at the moment of the fault, never assumed:
- the partition leaders come from the topic metadata (`describe_topics`);
- the active controller comes from DescribeQuorum (API 55), the Raft quorum's leader. Not from
  `describe_cluster()`: in KRaft mode a broker answers Metadata's controller id with a random
  live broker (measured here: three calls in a row gave 1, 3 and 2), so it names the wrong node
  two times in three.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

METADATA_TOPIC = "__cluster_metadata"  # the KRaft quorum's log: one partition, led by the
#                                       active controller


class BrokerFaultError(RuntimeError):
    """The cluster could not say which node to hurt (the fault is then skipped, and said so)."""


def busiest_leader(leaders: Mapping[tuple[str, int], int]) -> tuple[int, int]:
    """(node id, partitions it leads) of the node leading the most partitions; ties go to
    the lowest id, so a run is reproducible. Leaderless partitions (-1) are not counted."""
    counts = Counter(node for node in leaders.values() if node >= 0)
    if not counts:
        raise BrokerFaultError("no partition has a leader")
    node, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return node, count


async def partition_leaders(bootstrap: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """The current leader of each partition of `topics`, from the topic metadata."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return {(t["topic"], p["partition"]): int(p["leader"])
            for t in described for p in t["partitions"]}


class DescribeQuorumResponse_v0(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 55
    API_VERSION = 0
    SCHEMA = Schema(
        ("error_code", Int16),
        ("topics", CompactArray(
            ("topic_name", CompactString("utf-8")),
            ("partitions", CompactArray(
                ("partition_index", Int32),
                ("error_code", Int16),
                ("leader_id", Int32),
                ("leader_epoch", Int32),
                ("high_watermark", Int64),
                ("current_voters", CompactArray(
                    ("replica_id", Int32), ("log_end_offset", Int64), ("tags", TaggedFields))),
                ("observers", CompactArray(
                    ("replica_id", Int32), ("log_end_offset", Int64), ("tags", TaggedFields))),
                ("tags", TaggedFields),
            )),
            ("tags", TaggedFields),
        )),
        ("tags", TaggedFields),
    )


class DescribeQuorumRequest_v0(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 55
    API_VERSION = 0
    RESPONSE_TYPE = DescribeQuorumResponse_v0
    SCHEMA = Schema(
        ("topics", CompactArray(
            ("topic_name", CompactString("utf-8")),
            ("partitions", CompactArray(("partition_index", Int32), ("tags", TaggedFields))),
            ("tags", TaggedFields),
        )),
        ("tags", TaggedFields),
    )


class DescribeQuorumRequest(Request[DescribeQuorumRequest_v0]):  # type: ignore[misc]
    """The KRaft quorum's state; brokers forward it to the active controller."""

    API_KEY = 55

    def build(self, request_struct_class: type[DescribeQuorumRequest_v0]
              ) -> DescribeQuorumRequest_v0:
        return request_struct_class([(METADATA_TOPIC, [(0, {})], {})], {})


def quorum_leader(answer: Mapping[str, Any]) -> tuple[int, int]:
    """(leader id, leader epoch) of the metadata partition in a DescribeQuorum answer."""
    if answer.get("error_code"):
        raise BrokerFaultError(f"DescribeQuorum failed with error {answer['error_code']}")
    for topic in answer.get("topics", []):
        for part in topic["partitions"]:
            if topic["topic_name"] == METADATA_TOPIC and part["partition_index"] == 0:
                if part["error_code"] or part["leader_id"] < 0:
                    raise BrokerFaultError(f"the quorum has no leader (error"
                                           f" {part['error_code']})")
                return int(part["leader_id"]), int(part["leader_epoch"])
    raise BrokerFaultError("DescribeQuorum answered without the metadata partition")


async def active_controller(bootstrap: str) -> tuple[int, int]:
    """(node id, epoch) of the active KRaft controller, asked of the quorum itself."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        response = await admin._send_request(DescribeQuorumRequest())
    finally:
        await admin.close()
    return quorum_leader(response.to_object())
