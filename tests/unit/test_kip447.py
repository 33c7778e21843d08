"""kip447.py without a broker: the exact bytes of TxnOffsetCommit v3 and OffsetFetch v7 (laid
out by hand from Kafka's message JSON), the version choice (v3/v7 or a clear error, never an
older one), and the patched sender handler on aiokafka's real TransactionManager: a refusal or
a broker without v3 is an abortable error of the transaction, which stays begun so that the
abort sends EndTxn. The broker itself: tests/integration/test_kip447.py."""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

import aiokafka.producer.sender as aiokafka_sender
import pytest
from aiokafka.errors import CommitFailedError, IncompatibleBrokerVersion
from aiokafka.producer.transaction_manager import TransactionManager, TransactionState
from aiokafka.protocol.transaction import TxnOffsetCommitRequest_v0
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from router.worker.pipeline import kip447

TP, OUT = TopicPartition("in", 1), TopicPartition("out", 0)
META = kip447.GroupMetadata("grp", generation_id=7, member_id="m-1")


def compact(s: str) -> bytes:
    return bytes([len(s) + 1]) + s.encode()


def test_txn_offset_commit_v3_bytes_and_version() -> None:
    request = kip447.txn_offset_commit_v3("tx", 42, 3, META,
                                          {TP: OffsetAndMetadata(5, "m")})
    built = request.prepare({28: (0, 5)})
    assert type(built) is kip447.TxnOffsetCommitRequest_v3
    header = built.build_request_header(1, "c")
    assert (header.api_key, header.api_version, header.tags) == (28, 3, {})  # header v2
    expected = (compact("tx") + compact("grp") + struct.pack(">qhi", 42, 3, 7) + compact("m-1")
                + b"\x00"  # group_instance_id null
                + b"\x02" + compact("in") + b"\x02" + struct.pack(">iqi", 1, 5, -1)
                + compact("m") + b"\x00" + b"\x00" + b"\x00")
    assert built.encode() == expected
    assert kip447.TxnOffsetCommitRequest_v3.decode(expected).member_id == "m-1"
    for versions in ({28: (0, 2)}, {}):
        with pytest.raises(IncompatibleBrokerVersion, match="TxnOffsetCommitRequest_v3"):
            request.prepare(versions)


def test_offset_fetch_v7_bytes_and_version() -> None:
    request = kip447.OffsetFetchV7("grp", [("in", [0, 1], {})], True, {})
    built = request.prepare({9: (1, 9)})  # v7 exactly: v8+ has another layout
    assert type(built) is kip447.OffsetFetchRequest_v7
    assert built.encode() == (compact("grp") + b"\x02" + compact("in") + b"\x03"
                              + struct.pack(">ii", 0, 1) + b"\x00" + b"\x01" + b"\x00")
    with pytest.raises(IncompatibleBrokerVersion, match="OffsetFetchRequest_v7"):
        request.prepare({9: (0, 6)})
    answer = (struct.pack(">i", 0) + b"\x02" + compact("in") + b"\x02"
              + struct.pack(">iqi", 0, -1, -1) + b"\x01" + struct.pack(">h", 88) + b"\x00"
              + b"\x00" + struct.pack(">h", 0) + b"\x00")
    resp = kip447.OffsetFetchResponse_v7.decode(answer)
    assert resp.topics == [("in", [(0, -1, -1, "", 88, {})], {})] and resp.error_code == 0


def test_group_metadata_is_the_group_id_and_refuses_no_generation() -> None:
    assert META == "grp" and isinstance(META, str) and str(META) == "grp"
    coordinator = SimpleNamespace(generation=-1, member_id="", _group_instance_id=None)
    with pytest.raises(kip447.StaleGeneration):
        kip447.group_metadata(SimpleNamespace(_coordinator=coordinator), "grp")  # type: ignore[arg-type]
    coordinator.generation, coordinator.member_id = 4, "m-2"
    meta = kip447.group_metadata(SimpleNamespace(_coordinator=coordinator), "grp")  # type: ignore[arg-type]
    assert (meta.generation_id, meta.member_id, meta.group_instance_id) == (4, "m-2", None)
    assert issubclass(kip447.StaleGeneration, CommitFailedError)


def in_transaction(group: str) -> tuple[TransactionManager, Any]:
    txn = TransactionManager("tx", 60_000)
    txn.set_pid_and_epoch(42, 3)
    txn.begin_transaction()
    txn.maybe_add_partition_to_txn(OUT)
    txn.partition_added(OUT)
    sent = txn.add_offsets_to_txn({TP: OffsetAndMetadata(5, "")}, group)
    txn.consumer_group_added(group)
    return txn, sent


def handler(txn: TransactionManager, group: str, versions: dict[int, tuple[int, int]],
            answer: Any) -> Any:
    async def send(node_id: int, request: Any, group: Any = None) -> Any:
        request.prepare(versions)  # as aiokafka's connection does
        return answer

    sender = SimpleNamespace(_txn_manager=txn, _retry_backoff=0.01,
                             client=SimpleNamespace(send=send),
                             _coordinator_dead=lambda kind: None)
    kip447.install()
    kip447.install()  # idempotent
    return aiokafka_sender.TxnOffsetCommitHandler(sender, txn.offsets_to_commit()[0], group)


async def test_refused_offsets_are_an_abortable_error_of_a_begun_transaction() -> None:
    txn, sent = in_transaction(META)
    refused = kip447.TxnOffsetCommitResponse_v3(0, [("in", [(1, 22, {})], {})], {})
    assert await handler(txn, META, {28: (0, 3)}, refused).do(0) is True
    with pytest.raises(kip447.StaleGeneration, match="ILLEGAL_GENERATION"):
        sent.result()
    assert isinstance(txn.wait_for_transaction_end().exception(), kip447.StaleGeneration)
    assert txn.state is TransactionState.ABORTABLE_ERROR
    assert not txn.is_empty_transaction()  # so abort_transaction sends EndTxn(ABORT)


async def test_a_broker_without_v3_fails_the_commit_never_falls_back() -> None:
    txn, sent = in_transaction(META)
    assert await handler(txn, META, {28: (0, 2)}, None).do(0) is True
    with pytest.raises(IncompatibleBrokerVersion):
        sent.result()
    assert isinstance(txn.wait_for_transaction_end().exception(), IncompatibleBrokerVersion)
    assert txn.state is TransactionState.ABORTABLE_ERROR and not txn.is_empty_transaction()


async def test_a_plain_str_group_id_is_aiokafkas_v0() -> None:
    txn, sent = in_transaction("grp")
    ok = SimpleNamespace(errors=[("in", [(1, 0)])])
    h = handler(txn, "grp", {28: (0, 3)}, ok)
    assert type(h.create_request().prepare({28: (0, 3)})) is TxnOffsetCommitRequest_v0
    assert await h.do(0) is True
    assert sent.result() is None and txn.state is TransactionState.IN_TRANSACTION
