"""Apache Kafka in KRaft mode on loopback, from the pinned jars (see kafka_jars.py).

One node is broker and controller in one JVM; `nodes=3` starts three such nodes, all voters,
with replication factor 3 and `min.insync.replicas=2`, so broker failures are real. Without
a data dir everything lives in a temporary folder removed on stop; with one, a restart keeps
topics, offsets and consumer groups (KRaft's log dirs are formatted only once).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from router.harness.brokers.common import (
    BrokerError,
    MetadataView,
    answers_api_versions,
    broker_metadata,
    die_with_parent,
    free_ports,
)
from router.harness.brokers.kafka_jars import KAFKA_VERSION, jar_dir, logging_backend

STARTED_LINE = "Kafka Server started"
# Kafka's own test kits run brokers with 256-512 MB; the scripts' 1 GB is for real loads.
DEFAULT_HEAP = os.environ.get("LEADROUTER_KAFKA_HEAP", "512m")


@dataclass
class KafkaNode:
    """One KRaft node (broker and controller) of a local cluster."""

    node_id: int
    host: str
    port: int
    controller_port: int
    root: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    log_offset: int = field(default=0, init=False)  # where this launch's log lines begin

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def started(self) -> bool:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return STARTED_LINE.encode() in f.read()
        except OSError:
            return False

    @property
    def log_path(self) -> Path:
        return self.root / "broker.log"

    @property
    def config_path(self) -> Path:
        return self.root / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.root / "data"

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class KafkaBroker:
    """A local Apache Kafka cluster of `nodes` nodes; a context manager, or start()/stop()."""

    host: str = "127.0.0.1"
    port: int = 0
    nodes: int = 1
    data_dir: Path | None = None
    version: str = KAFKA_VERSION
    heap: str = DEFAULT_HEAP
    start_timeout: float = 90.0
    log_path: Path | None = None  # node 1's log is copied here on stop (tests keep it)
    # broker settings added to (or replacing) the defaults below: what a benchmark compares
    extra_config: dict[str, str] = field(default_factory=dict)
    kind: str = field(default="kafka", init=False)
    members: list[KafkaNode] = field(default_factory=list, init=False)
    _temp_root: Path | None = field(default=None, init=False)
    _classpath: str = field(default="", init=False)

    @property
    def url(self) -> str:
        return "kafka://" + ",".join(n.bootstrap for n in self.members)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.members)

    def alive(self) -> bool:
        return bool(self.members) and all(n.is_running() for n in self.members)

    @property
    def pids(self) -> list[int]:
        return [n.process.pid for n in self.members if n.process is not None]

    @property
    def replication_factor(self) -> int:
        return min(self.nodes, 3)

    # -- lifecycle ---------------------------------------------------------------------

    def plan(self) -> KafkaBroker:
        """Choose the nodes' folders and ports without starting anything, so that `url` is
        known before the broker runs (chaos starts a worker before its broker)."""
        if self.members:
            return self
        root = self._root()
        fixed = frozenset({self.port}) if self.port else frozenset()
        fresh = free_ports(2 * self.nodes - (1 if self.port else 0), self.host, avoid=fixed)
        ports = ([self.port] if self.port else []) + fresh
        self.members = [
            KafkaNode(i + 1, self.host, ports[i], ports[self.nodes + i], root / f"node-{i + 1}")
            for i in range(self.nodes)
        ]
        self._reuse_controller_ports(root)
        return self

    def start(self) -> KafkaBroker:
        self._classpath = str(jar_dir(self.version)) + "/*"
        self.plan()
        root = self._root_dir
        voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in self.members)
        for node in self.members:
            node.root.mkdir(parents=True, exist_ok=True)
            self._write_config(node, voters)
            (node.root / "ports").write_text(f"{node.port} {node.controller_port}\n")
        self._format(root)
        try:
            for node in self.members:
                self._launch(node)
            self.wait_ready(self.members, self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        for node in self.members:
            node.signal(signal.SIGCONT)  # a paused JVM cannot shut down
            node.signal(signal.SIGTERM)
        for node in self.members:
            self._reap(node, timeout)
        if self.log_path is not None and self.members:
            with contextlib.suppress(OSError):
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.members[0].log_path, self.log_path)
        if self._temp_root is not None:
            shutil.rmtree(self._temp_root, ignore_errors=True)
            self._temp_root = None
            self.members = []

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults, for chaos runs and tests ----------------------------------------------

    def kill_node(self, node: KafkaNode) -> None:
        """SIGKILL: no controlled shutdown, like a crashed host."""
        node.signal(signal.SIGKILL)
        self._reap(node, 10)

    def restart_node(self, node: KafkaNode, timeout: float | None = None) -> None:
        if node.is_running():
            node.signal(signal.SIGTERM)
            self._reap(node, 30)
        self._launch(node)
        self.wait_ready([node], timeout or self.start_timeout)

    def pause(self, node: KafkaNode | None = None) -> None:
        for n in [node] if node else self.members:
            n.signal(signal.SIGSTOP)

    def resume(self, node: KafkaNode | None = None) -> None:
        for n in [node] if node else self.members:
            n.signal(signal.SIGCONT)

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.members if n.node_id == node_id)

    # -- internals ---------------------------------------------------------------------

    @property
    def _root_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else self._root()

    def _root(self) -> Path:
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            return self.data_dir
        if self._temp_root is None:
            self._temp_root = Path(tempfile.mkdtemp(prefix="leadrouter-kafka-"))
        return self._temp_root

    def _reuse_controller_ports(self, root: Path) -> None:
        """A kept data dir keeps its ports: the quorum's voters are part of its identity."""
        for node in self.members:
            saved = node.root / "ports"
            if saved.is_file():
                port, controller = (int(x) for x in saved.read_text().split())
                node.port = self.port if node.node_id == 1 and self.port else port
                node.controller_port = controller

    def _write_config(self, node: KafkaNode, voters: str) -> None:
        rf = self.replication_factor
        min_isr = 2 if rf >= 3 else 1
        settings = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "listeners": f"PLAINTEXT://{node.host}:{node.port},"
                         f"CONTROLLER://{node.host}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{node.host}:{node.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": node.log_dir,
            "default.replication.factor": rf,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": min_isr,
            # fewer internal partitions than production's 50: a local broker creates them on
            # the first group or transaction, and 50 cost seconds of start-up per test process
            "offsets.topic.num.partitions": 8,
            "transaction.state.log.num.partitions": 8,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "false",
            # Kafka's own test kit: the cleaner's 128 MB dedupe buffer is for real loads
            "log.cleaner.dedupe.buffer.size": 2 * 1024 * 1024,
            "log.cleaner.backoff.ms": 1000,
            **self.extra_config,
        }
        node.config_path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        backend = logging_backend(self.version)
        (node.root / backend.config_name).write_text(backend.config_text)

    def _java(self, node: KafkaNode, main: str, *args: str) -> list[str]:
        backend = logging_backend(self.version)
        return ["java", f"-Xmx{self.heap}", f"-Xms{min_heap(self.heap)}",
                "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
                f"-D{backend.system_property}=file:{node.root / backend.config_name}",
                "-cp", self._classpath, main, *args]

    def _format(self, root: Path) -> None:
        unformatted = [n for n in self.members if not (n.log_dir / "meta.properties").is_file()]
        if not unformatted:
            return
        cluster_file = root / "cluster-id"
        if cluster_file.is_file():
            cluster_id = cluster_file.read_text().strip()
        else:
            cluster_id = new_cluster_id()
            cluster_file.write_text(cluster_id + "\n")
        for node in unformatted:
            done = subprocess.run(
                self._java(node, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                           "-c", str(node.config_path)),
                capture_output=True, text=True, timeout=120,
            )
            if done.returncode != 0:
                raise BrokerError(f"formatting the KRaft log dir {node.log_dir} failed"
                                  f" (exit {done.returncode}): {done.stdout}{done.stderr}")

    def _launch(self, node: KafkaNode) -> None:
        node.log_offset = node.log_path.stat().st_size if node.log_path.exists() else 0
        with open(node.log_path, "ab") as out:
            node.process = subprocess.Popen(
                self._java(node, "kafka.Kafka", str(node.config_path)),
                stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop the JVMs in order
                preexec_fn=die_with_parent(),
            )

    def wait_ready(self, nodes: list[KafkaNode], timeout: float) -> None:
        """Wait until each of `nodes` has started, answers ApiVersions, and lists all of
        `nodes` and a controller in its Metadata answer. The last is what a client that
        connects right after needs: a KRaft node logs "Kafka Server started" while its copy
        of the metadata may still lack brokers (seen: node 1 listing only 1 and 3), and an
        aiokafka admin that bootstraps from an empty list knows no controller, so its
        create_topics fails with `'NoneType' object has no attribute 'nodeId'`."""
        deadline = time.monotonic() + timeout
        expected = frozenset(n.node_id for n in nodes)
        pending = list(nodes)
        waiting_for: dict[int, str] = {}
        while pending:
            for node in list(pending):
                if node.process is None or node.process.poll() is not None:
                    code = node.process.returncode if node.process else None
                    raise BrokerError(
                        f"Kafka node {node.node_id} exited with code {code} while starting;"
                        f" the end of {node.log_path}:\n{node.log_tail()}")
                reason = self._not_ready(node, expected)
                if reason is None:
                    pending.remove(node)
                else:
                    waiting_for[node.node_id] = reason
            if pending and time.monotonic() > deadline:
                ids = [n.node_id for n in pending]
                reasons = "; ".join(f"node {n.node_id} {waiting_for[n.node_id]}"
                                    for n in pending)
                raise BrokerError(f"Kafka node(s) {ids} not ready within {timeout:.0f} s"
                                  f" ({reasons}); the end of {pending[0].log_path}:\n"
                                  f"{pending[0].log_tail()}")
            if pending:
                time.sleep(0.2)

    @staticmethod
    def _not_ready(node: KafkaNode, expected: frozenset[int]) -> str | None:
        """None when `node` is ready, else what it is still waited for (for the error)."""
        if not node.started():
            return f"has not logged {STARTED_LINE!r}"
        if not answers_api_versions(node.host, node.port, 1.0):
            return "does not answer ApiVersions"
        view = broker_metadata(node.host, node.port, 1.0)
        return metadata_not_ready(view, expected)

    @staticmethod
    def _reap(node: KafkaNode, timeout: float) -> None:
        proc = node.process
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)


def metadata_not_ready(view: MetadataView | None, expected: frozenset[int]) -> str | None:
    """None when a node's Metadata answer lists the `expected` brokers and a controller among
    them, else what is missing, worded for the error a timed-out start raises."""
    wanted = f"brokers {sorted(expected)} and a controller among them"
    if view is None:
        return f"does not answer Metadata (waited for {wanted})"
    if view.lists(expected):
        return None
    return f"answers Metadata with {view.describe()} (waited for {wanted})"


def new_cluster_id() -> str:
    """What `kafka-storage random-uuid` prints: a base64url UUID without padding, drawn again
    when it starts with "-" (about 1 in 64), which StorageTool's `-t` would read as an option
    and refuse to format."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def min_heap(heap: str) -> str:
    """Half of -Xmx for -Xms (a JVM that grows its heap under load pauses while it does)."""
    unit = heap[-1] if heap[-1].isalpha() else ""
    number = int(heap[:-1] if unit else heap)
    return f"{max(number // 2, 1)}{unit}"
