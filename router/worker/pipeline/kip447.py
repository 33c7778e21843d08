"""KIP-447 for aiokafka 0.14, which sends neither request it needs (a local patch).

One transactional producer per worker instead of one per partition is safe only if a zombie
(a member a rebalance moved on from) cannot commit; Kafka's way, as Java's
sendOffsetsToTransaction(offsets, ConsumerGroupMetadata):
- TxnOffsetCommit v3 carries the generation and member id, so the group coordinator refuses
  a zombie's offsets and its transaction can only abort (aiokafka sends v0, with neither);
- OffsetFetch v7 require_stable: the coordinator answers UNSTABLE_OFFSET_COMMIT while a
  transaction holding offsets of the partition is open or its markers are not written, so a
  new owner never resumes before the previous owner's last commit.
Layouts: apache/kafka clients/src/main/resources/common/message/{TxnOffsetCommit,OffsetFetch}
{Request,Response}.json (v3 and v7 are flexible: compact strings and arrays, tagged fields).
"""

from __future__ import annotations

import asyncio
import collections
from types import SimpleNamespace
from typing import Any

import aiokafka.producer.sender as aiokafka_sender
from aiokafka import AIOKafkaConsumer
from aiokafka.client import ConnectionGroup
from aiokafka.errors import (
    CommitFailedError,
    GroupAuthorizationFailedError,
    IncompatibleBrokerVersion,
    KafkaError,
)
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)
from aiokafka.structs import TopicPartition

STALE_MEMBER = {22: "ILLEGAL_GENERATION", 25: "UNKNOWN_MEMBER_ID", 82: "FENCED_INSTANCE_ID"}
GROUP_AUTHORIZATION_FAILED = 30
UNSTABLE_OFFSET_COMMIT = 88
COORDINATOR_MOVED = {15, 16}  # COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR: find it again
FETCH_AGAIN = {UNSTABLE_OFFSET_COMMIT, 14, *COORDINATOR_MOVED}  # 14: COORDINATOR_LOAD_IN_PROGRESS
STABLE_RETRY_SECONDS = 0.03
_TAGS: dict[int, bytes] = {}


class GroupMetadata(str):
    """The consumer group id (a str, so aiokafka's send_offsets_to_transaction accepts it)
    carrying the member's generation, member id and group instance id, as Java's
    ConsumerGroupMetadata: with it the offsets go out as TxnOffsetCommit v3 and the group
    coordinator rejects a zombie's commit."""

    generation_id: int
    member_id: str
    group_instance_id: str | None

    def __new__(cls, group_id: str, *, generation_id: int, member_id: str,
                group_instance_id: str | None = None) -> GroupMetadata:
        self = super().__new__(cls, group_id)
        self.generation_id = generation_id
        self.member_id = member_id
        self.group_instance_id = group_instance_id
        return self

    def __repr__(self) -> str:
        return (f"GroupMetadata({str(self)!r}, generation_id={self.generation_id},"
                f" member_id={self.member_id!r}, group_instance_id={self.group_instance_id!r})")


class StaleGeneration(CommitFailedError):  # type: ignore[misc]
    """The group coordinator refused the transaction's offsets: ILLEGAL_GENERATION,
    UNKNOWN_MEMBER_ID or FENCED_INSTANCE_ID (this member is a zombie: a rebalance moved its
    partitions), or the consumer is in no generation at all. The caller must abort the
    transaction. A CommitFailedError (a KafkaError), as Java's CommitFailedException."""

    def __init__(self, reason: str, group: str, error_code: int | None = None) -> None:
        KafkaError.__init__(self, f"{reason}: transactional offsets of group {group!r} refused")
        self.reason = reason
        self.error_code = error_code


def group_metadata(consumer: AIOKafkaConsumer, group_id: str) -> GroupMetadata:
    """The consumer's current generation and member id (aiokafka has no public accessor).
    Raises StaleGeneration outside a generation: generation -1 with no member id would make
    the coordinator skip the check (KIP-447 leaves v0 clients unfenced), so a member that
    lost its generation would commit like an unfenced one."""
    coordinator = consumer._coordinator
    generation, member_id = int(coordinator.generation), str(coordinator.member_id or "")
    if generation < 0 or not member_id:
        raise StaleGeneration("consumer is in no generation", group_id)
    return GroupMetadata(group_id, generation_id=generation, member_id=member_id,
                         group_instance_id=getattr(coordinator, "_group_instance_id", None))


STR, TAGS = CompactString("utf-8"), ("tags", TaggedFields)


def _topics(*partition_fields: tuple[str, Any]) -> CompactArray:
    return CompactArray(("name", STR), ("partitions", CompactArray(*partition_fields, TAGS)), TAGS)


class TxnOffsetCommitResponse_v3(Response):  # type: ignore[misc]
    API_KEY, API_VERSION = 28, 3
    SCHEMA = Schema(("throttle_time_ms", Int32),
                    ("topics", _topics(("partition_index", Int32), ("error_code", Int16))), TAGS)


class TxnOffsetCommitRequest_v3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION, API_KEY, API_VERSION = True, 28, 3
    RESPONSE_TYPE = TxnOffsetCommitResponse_v3
    SCHEMA = Schema(("transactional_id", STR), ("group_id", STR), ("producer_id", Int64),
                    ("producer_epoch", Int16), ("generation_id", Int32), ("member_id", STR),
                    ("group_instance_id", STR),  # nullable
                    ("topics", _topics(("partition_index", Int32), ("committed_offset", Int64),
                                       ("committed_leader_epoch", Int32),
                                       ("committed_metadata", STR))), TAGS)


class OffsetFetchResponse_v7(Response):  # type: ignore[misc]
    API_KEY, API_VERSION = 9, 7
    SCHEMA = Schema(("throttle_time_ms", Int32),
                    ("topics", _topics(("partition_index", Int32), ("committed_offset", Int64),
                                       ("committed_leader_epoch", Int32), ("metadata", STR),
                                       ("error_code", Int16))),
                    ("error_code", Int16), TAGS)


class OffsetFetchRequest_v7(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION, API_KEY, API_VERSION = True, 9, 7
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = Schema(("group_id", STR),
                    ("topics", CompactArray(("name", STR),
                                            ("partition_indexes", CompactArray(Int32)), TAGS)),
                    ("require_stable", Boolean), TAGS)


class _ExactVersion(Request[Any]):  # type: ignore[misc]
    """This one version or a clear error: aiokafka's Request would take an older one, and an
    older TxnOffsetCommit drops the fence without a word."""

    API_KEY = -1
    STRUCT: type[Any]

    def __init__(self, *fields: Any) -> None:
        self.fields = fields

    def prepare(self, versions: dict[int, tuple[int, int]]) -> Any:
        key, version = self.STRUCT.API_KEY, self.STRUCT.API_VERSION
        low, high = versions.get(key, (0, -1))
        if not low <= version <= high:
            raise IncompatibleBrokerVersion(f"KIP-447 needs {self.STRUCT.__name__} (Kafka >="
                                            f" 2.5); the broker has API {key} v{low}..v{high}")
        return self.build(self.STRUCT)

    def build(self, request_struct_class: type[Any]) -> Any:
        return request_struct_class(*self.fields)


class TxnOffsetCommitV3(_ExactVersion):
    API_KEY, STRUCT = 28, TxnOffsetCommitRequest_v3


class OffsetFetchV7(_ExactVersion):
    API_KEY, STRUCT = 9, OffsetFetchRequest_v7


def txn_offset_commit_v3(transactional_id: str, producer_id: int, producer_epoch: int,
                         group: GroupMetadata, offsets: dict[TopicPartition, Any]
                         ) -> TxnOffsetCommitV3:
    by_topic: dict[str, list[tuple[Any, ...]]] = collections.defaultdict(list)
    for tp, meta in sorted(offsets.items()):
        by_topic[tp.topic].append((tp.partition, meta.offset, -1, meta.metadata, _TAGS))
    return TxnOffsetCommitV3(transactional_id, str(group), producer_id, producer_epoch,
                             group.generation_id, group.member_id, group.group_instance_id,
                             [(t, parts, _TAGS) for t, parts in by_topic.items()], _TAGS)


def _abortable(txn_manager: Any, exc: Exception) -> None:
    """aiokafka's abortable error, but the transaction stays begun on the broker.
    error_transaction forgets its partitions and group, and abort_transaction then skips
    EndTxn(ABORT) as for an empty transaction: the broker's transaction stayed open, and the
    next transaction's commit would commit this one's records with it. The error reaches the
    caller by send_offsets_to_transaction; the waiter's copy (re-raised by a commit) is marked
    seen, or the abort that replaces it logs "Future exception was never retrieved"."""
    partitions, group = set(txn_manager._txn_partitions), txn_manager._txn_consumer_group
    txn_manager.error_transaction(exc)
    txn_manager.wait_for_transaction_end().exception()
    txn_manager._txn_partitions.update(partitions)
    txn_manager._txn_consumer_group = group


_AIOKAFKA_HANDLER: Any = aiokafka_sender.TxnOffsetCommitHandler


class _FencedTxnOffsetCommitHandler(_AIOKAFKA_HANDLER):  # type: ignore[misc]
    """aiokafka's handler; for a GroupMetadata group id, v3 out and the member errors made an
    abortable StaleGeneration (raising would kill the sender and with it the producer)."""

    async def do(self, node_id: int) -> bool:
        group, txn = self._group_id, self._sender._txn_manager
        if not isinstance(group, GroupMetadata):
            return bool(await super().do(node_id))
        if group.generation_id < 0 or not group.member_id:
            _abortable(txn, StaleGeneration("no generation in the group metadata", group))
            return True
        try:
            return bool(await super().do(node_id))
        except IncompatibleBrokerVersion as exc:  # never v0 instead: that would be unfenced
            _abortable(txn, exc)
            return True

    def create_request(self) -> Any:
        if not isinstance(self._group_id, GroupMetadata):
            return super().create_request()
        txn = self._sender._txn_manager
        return txn_offset_commit_v3(txn.transactional_id, txn.producer_id, txn.producer_epoch,
                                    self._group_id, self._offsets)

    def handle_response(self, resp: Any) -> Any:
        if not isinstance(self._group_id, GroupMetadata):
            return super().handle_response(resp)
        errors = [(topic, [(p, code) for p, code, _tags in parts])
                  for topic, parts, _tags in resp.topics]
        for _topic, parts in errors:
            for _p, code in parts:
                if code in STALE_MEMBER:
                    _abortable(self._sender._txn_manager,
                               StaleGeneration(STALE_MEMBER[code], self._group_id, code))
                    return None
                if code == GROUP_AUTHORIZATION_FAILED:
                    _abortable(self._sender._txn_manager,
                               GroupAuthorizationFailedError(str(self._group_id)))
                    return None
        # every other answer as aiokafka handles it, in the v0 shape it reads
        return super().handle_response(SimpleNamespace(errors=errors))


def install() -> None:
    """Idempotent, process-wide: patch aiokafka's producer sender so that a
    send_offsets_to_transaction(offsets, GroupMetadata) sends TxnOffsetCommit v3. A plain str
    group id keeps aiokafka's behaviour exactly. A broker without v3 fails the commit with
    IncompatibleBrokerVersion (abortable), never an unfenced v0."""
    aiokafka_sender.TxnOffsetCommitHandler = _FencedTxnOffsetCommitHandler


async def committed_stable(consumer: AIOKafkaConsumer, tps: list[TopicPartition], *,
                           timeout_s: float = 30.0) -> dict[TopicPartition, int | None]:
    """The group's committed offsets with OffsetFetch v7 require_stable=true, retried every
    STABLE_RETRY_SECONDS while the coordinator answers UNSTABLE_OFFSET_COMMIT (a transaction
    holding offsets of one of these partitions is open or its markers are not written). None
    for a partition with no committed offset. KafkaError after timeout_s; an
    IncompatibleBrokerVersion if the broker lacks v7."""
    if not tps:
        return {}
    coordinator, client = consumer._coordinator, consumer._client
    by_topic: dict[str, list[int]] = collections.defaultdict(list)
    for tp in sorted(set(tps)):
        by_topic[tp.topic].append(tp.partition)
    request = OffsetFetchV7(coordinator.group_id,
                            [(t, ps, _TAGS) for t, ps in by_topic.items()], True, _TAGS)
    seen: set[int] = set()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                await coordinator.ensure_coordinator_known()
                try:
                    resp = await client.send(coordinator.coordinator_id, request,
                                             group=ConnectionGroup.COORDINATION)
                except KafkaError as exc:  # the connection or the node: ask again
                    if not exc.retriable:
                        raise
                    coordinator.coordinator_dead()
                    await asyncio.sleep(STABLE_RETRY_SECONDS)
                    continue
                out: dict[TopicPartition, int | None] = {}
                codes = {resp.error_code} - {0}
                for topic, parts, _tags in resp.topics:
                    for p, offset, _epoch, _meta, code, _ptags in parts:
                        out[TopicPartition(topic, p)] = offset if offset >= 0 else None
                        codes |= {code} - {0}
                if not codes:
                    return {tp: out.get(tp) for tp in tps}
                seen |= codes
                if codes - FETCH_AGAIN:
                    raise KafkaError(f"OffsetFetch v7 for group {coordinator.group_id!r}:"
                                     f" error codes {sorted(codes)}")
                if codes & COORDINATOR_MOVED:
                    coordinator.coordinator_dead()
                await asyncio.sleep(STABLE_RETRY_SECONDS)
    except TimeoutError:
        raise KafkaError(f"offsets of group {coordinator.group_id!r} for {sorted(tps)} not"
                         f" stable after {timeout_s} s (error codes seen {sorted(seen)})"
                         ) from None
