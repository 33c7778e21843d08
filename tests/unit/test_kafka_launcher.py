"""The Apache Kafka launcher's pure parts: jar checks, errors a user can act on, configs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from router.harness.brokers import BrokerError, KafkaBroker, kafka_jars, local_broker
from router.harness.brokers.common import die_with_parent, free_ports
from router.harness.brokers.kafka import min_heap, new_cluster_id


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
