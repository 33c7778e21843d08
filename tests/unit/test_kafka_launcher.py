"""The Apache Kafka launcher's pure parts: jar checks, errors a user can act on, configs."""

from __future__ import annotations

import hashlib
import shutil
import socket
import struct
import threading
from pathlib import Path

import pytest

from router.harness.brokers import BrokerError, KafkaBroker, kafka_jars, local_broker
from router.harness.brokers import kafka as kafka_launcher
from router.harness.brokers.common import (
    MetadataView,
    broker_metadata,
    die_with_parent,
    free_ports,
    metadata_request,
    parse_metadata_response,
)
from router.harness.brokers.kafka import KafkaNode, metadata_not_ready, min_heap, new_cluster_id


def test_every_pinned_version_has_a_checksum_list_with_the_broker_jar() -> None:
    digests = kafka_jars.expected_digests(kafka_jars.KAFKA_VERSION)
    assert f"kafka_2.13-{kafka_jars.KAFKA_VERSION}.jar" in digests
    assert f"kafka-clients-{kafka_jars.KAFKA_VERSION}.jar" in digests
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in digests.values())


def test_a_version_without_a_checksum_list_is_refused() -> None:
    with pytest.raises(BrokerError, match="no jar checksum list"):
        kafka_jars.expected_digests("9.9.9")


def write_jars(folder: Path, contents: dict[str, bytes]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}


def test_matching_jars_pass(tmp_path: Path) -> None:
    expected = write_jars(tmp_path / "jars", {"a.jar": b"a", "b.jar": b"b"})
    kafka_jars.verify(tmp_path / "jars", expected)
    assert (tmp_path / "jars" / "a.jar").is_file()


@pytest.mark.parametrize(("change", "word"), [
    ("tamper", "changed: ['a.jar']"),
    ("extra", "unexpected: ['evil.jar']"),
    ("missing", "missing: ['b.jar']"),
])
def test_a_changed_extra_or_missing_jar_is_refused_and_removed(tmp_path: Path, change: str,
                                                               word: str) -> None:
    jars = tmp_path / "jars"
    expected = write_jars(jars, {"a.jar": b"a", "b.jar": b"b"})
    if change == "tamper":
        (jars / "a.jar").write_bytes(b"not a")
    elif change == "extra":
        (jars / "evil.jar").write_bytes(b"x")
    else:
        (jars / "b.jar").unlink()
    with pytest.raises(BrokerError, match=word.replace("[", r"\[").replace("]", r"\]")):
        kafka_jars.verify(jars, expected)
    assert not jars.exists(), "nothing unverified is left to run"


def test_missing_java_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BrokerError) as error:
        kafka_jars.jar_dir(progress=False)
    message = str(error.value)
    assert "`java` is not on PATH" in message
    assert "openjdk-17" in message and "--kind tansu" in message


def test_missing_maven_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BrokerError, match=r"`mvn` is not on PATH.*maven"):
        kafka_jars.resolve(kafka_jars.KAFKA_VERSION, tmp_path / "jars")


def test_the_cache_lives_outside_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADROUTER_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/someone")
    assert kafka_jars.cache_root() == Path("/var/cache/someone/leadrouter")
    monkeypatch.setenv("LEADROUTER_CACHE_DIR", "/tmp/lr")
    assert kafka_jars.cache_root() == Path("/tmp/lr")


def test_logging_backend_follows_the_kafka_line() -> None:
    assert kafka_jars.logging_backend("3.9.1").system_property == "log4j.configuration"
    assert kafka_jars.logging_backend("4.1.1").system_property == "log4j2.configurationFile"


def test_three_nodes_are_voters_with_replication_three(tmp_path: Path) -> None:
    broker = KafkaBroker(nodes=3, data_dir=tmp_path).plan()
    assert len(broker.members) == 3 and broker.replication_factor == 3
    voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in broker.members)
    for node in broker.members:
        node.root.mkdir(parents=True)
        broker._write_config(node, voters)
        config = dict(line.split("=", 1) for line in node.config_path.read_text().splitlines())
        assert config["controller.quorum.voters"] == voters
        assert config["min.insync.replicas"] == "2"
        assert config["transaction.state.log.min.isr"] == "2"
        assert config["offsets.topic.replication.factor"] == "3"
        assert config["listeners"].startswith(f"PLAINTEXT://127.0.0.1:{node.port},")
    assert broker.url == "kafka://" + ",".join(n.bootstrap for n in broker.members)


def test_tansu_cannot_pretend_to_be_a_cluster() -> None:
    with pytest.raises(BrokerError, match="need the Apache Kafka broker"):
        local_broker("tansu", nodes=3)


def test_unknown_local_broker_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADROUTER_LOCAL_BROKER", "redpanda")
    with pytest.raises(BrokerError, match="choose one of kafka, tansu"):
        local_broker()


@pytest.mark.parametrize(("heap", "half"), [("512m", "256m"), ("1g", "1g"), ("2G", "1G"),
                                            ("1024", "512")])
def test_min_heap_is_half_the_max(heap: str, half: str) -> None:
    assert min_heap(heap) == half


def test_children_die_with_their_parent_only_from_the_main_thread() -> None:
    import threading

    assert die_with_parent() is not None
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(die_with_parent()))
    thread.start()
    thread.join()
    assert seen == [None]


def test_cluster_ids_never_look_like_an_option() -> None:
    """StorageTool's `-t -xyz` fails to parse; about 1 id in 64 started with '-'."""
    ids = {new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_a_cluster_never_gets_the_same_port_twice(tmp_path: Path) -> None:
    for _ in range(20):
        broker = KafkaBroker(nodes=3, data_dir=tmp_path / "c", port=free_ports(1)[0]).plan()
        ports = [p for n in broker.members for p in (n.port, n.controller_port)]
        assert len(set(ports)) == 6, ports
        assert broker.members[0].port == broker.port
        shutil.rmtree(tmp_path / "c")
    assert len(set(free_ports(50))) == 50


def kafka_string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    return struct.pack(">h", len(text)) + text.encode()


def metadata_response_v4(correlation_id: int, brokers: list[int], controller: int) -> bytes:
    """A Metadata v4 answer as a broker frames it (size prefix included), with no topics."""
    body = struct.pack(">ii", correlation_id, 0) + struct.pack(">i", len(brokers))
    for node_id in brokers:
        rack = None if node_id % 2 else "rack-a"
        body += (struct.pack(">i", node_id) + kafka_string("127.0.0.1")
                 + struct.pack(">i", 9000 + node_id) + kafka_string(rack))
    body += kafka_string("cluster-id") + struct.pack(">i", controller) + struct.pack(">i", 0)
    return struct.pack(">i", len(body)) + body


def test_a_metadata_answer_gives_its_brokers_and_controller() -> None:
    payload = metadata_response_v4(11, [1, 2, 3], 2)[4:]
    assert parse_metadata_response(payload, 11) == MetadataView(frozenset({1, 2, 3}), 2)
    with pytest.raises(ValueError, match="not to this request"):
        parse_metadata_response(payload, 12)
    with pytest.raises(ValueError, match="truncated"):
        parse_metadata_response(payload[:20], 11)


def test_the_metadata_probe_asks_for_metadata_v4_without_topics() -> None:
    frame = metadata_request(11)
    (size,) = struct.unpack(">i", frame[:4])
    assert size == len(frame) - 4
    api_key, version, correlation_id = struct.unpack(">hhi", frame[4:12])
    assert (api_key, version, correlation_id) == (3, 4, 11)
    assert frame.endswith(struct.pack(">ib", 0, 0))  # no topics, no auto-creation


def test_the_metadata_probe_reads_a_brokers_answer_over_a_socket() -> None:
    """A fake broker on loopback answers one Metadata request: node 1's lagging view."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received: list[bytes] = []

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            (size,) = struct.unpack(">i", conn.recv(4))
            request = conn.recv(size)
            received.append(request)
            (correlation_id,) = struct.unpack(">i", request[4:8])
            conn.sendall(metadata_response_v4(correlation_id, [1, 3], 3))

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        view = broker_metadata("127.0.0.1", port, timeout=5)
    finally:
        thread.join(5)
        server.close()
    assert view == MetadataView(frozenset({1, 3}), 3)
    assert received and struct.unpack(">hh", received[0][:4]) == (3, 4)
    assert broker_metadata("127.0.0.1", free_ports(1)[0], timeout=0.5) is None  # nobody there


@pytest.mark.parametrize(("view", "missing"), [
    (None, "does not answer Metadata"),
    (MetadataView(frozenset(), -1), "brokers [] and controller -1"),
    (MetadataView(frozenset({1, 3}), 3), "brokers [1, 3] and controller 3"),
    (MetadataView(frozenset({1, 2, 3}), 7), "controller 7"),
])
def test_a_node_is_not_ready_until_its_metadata_lists_every_node_and_a_controller(
    view: MetadataView | None, missing: str,
) -> None:
    reason = metadata_not_ready(view, frozenset({1, 2, 3}))
    assert reason is not None and missing in reason
    assert "waited for brokers [1, 2, 3] and a controller among them" in reason
    ready = MetadataView(frozenset({1, 2, 3}), 2)
    assert metadata_not_ready(ready, frozenset({1, 2, 3})) is None
    assert metadata_not_ready(MetadataView(frozenset({1, 2}), 1), frozenset({2})) is None


class RunningProcess:
    returncode = None

    def poll(self) -> None:
        return None


def started_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[KafkaNode]:
    """Three nodes that logged their start and answer ApiVersions, without JVMs."""
    monkeypatch.setattr(kafka_launcher, "answers_api_versions", lambda *a, **k: True)
    nodes = []
    for i in (1, 2, 3):
        node = KafkaNode(i, "127.0.0.1", 9000 + i, 9100 + i, tmp_path / f"node-{i}")
        node.root.mkdir()
        node.log_path.write_text(kafka_launcher.STARTED_LINE + "\n")
        node.process = RunningProcess()  # type: ignore[assignment]
        nodes.append(node)
    return nodes


def test_a_cluster_start_waits_until_every_node_lists_all_brokers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodes = started_nodes(tmp_path, monkeypatch)
    asked: list[int] = []

    def metadata(host: str, port: int, timeout: float) -> MetadataView:
        asked.append(port)
        if len(asked) <= 4:  # node 1 lags for its first two answers
            return MetadataView(frozenset({1, 3}) if port == 9001 else frozenset(), -1)
        return MetadataView(frozenset({1, 2, 3}), 1)

    monkeypatch.setattr(kafka_launcher, "broker_metadata", metadata)
    KafkaBroker(nodes=3).wait_ready(nodes, timeout=10)
    assert asked.count(9001) >= 2 and len(asked) >= 5


def test_a_cluster_whose_metadata_never_fills_says_what_it_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodes = started_nodes(tmp_path, monkeypatch)
    monkeypatch.setattr(kafka_launcher, "broker_metadata",
                        lambda host, port, timeout: MetadataView(frozenset({1, 3}), 3))
    with pytest.raises(BrokerError) as caught:
        KafkaBroker(nodes=3).wait_ready(nodes, timeout=0.3)
    message = str(caught.value)
    assert "Kafka node(s) [1, 2, 3] not ready within 0 s" in message
    assert ("node 2 answers Metadata with brokers [1, 3] and controller 3 (waited for"
            " brokers [1, 2, 3] and a controller among them)") in message
