"""Local brokers for people and tests: Apache Kafka (the default) or the pip-only Tansu.

`LEADROUTER_LOCAL_BROKER` (`kafka` or `tansu`) chooses for the demo, chaos, benchmarks and the
test suite; commands that start a broker also take `--kind`. Nothing falls back from one to the
other by itself: a missing JVM is an error that says what to install or how to choose Tansu.
"""

from __future__ import annotations

import os
from pathlib import Path

from router.harness.brokers.common import BrokerError, LocalBroker, free_port
from router.harness.brokers.kafka import KafkaBroker
from router.harness.brokers.tansu import TansuBroker

KINDS = ("kafka", "tansu")

__all__ = [
    "KINDS",
    "BrokerError",
    "KafkaBroker",
    "LocalBroker",
    "TansuBroker",
    "default_kind",
    "describe",
    "free_port",
    "local_broker",
]


def default_kind() -> str:
    kind = os.environ.get("LEADROUTER_LOCAL_BROKER", "kafka").strip().lower() or "kafka"
    if kind not in KINDS:
        raise BrokerError(f"LEADROUTER_LOCAL_BROKER={kind!r}: choose one of {', '.join(KINDS)}")
    return kind


def local_broker(kind: str | None = None, *, port: int = 0, nodes: int = 1,
                 data_dir: Path | None = None, log_path: Path | None = None,
                 host: str = "127.0.0.1", extra_config: dict[str, str] | None = None
                 ) -> KafkaBroker | TansuBroker:
    """A broker of `kind` (default: `default_kind()`), not yet started."""
    kind = kind or default_kind()
    if kind == "tansu":
        if nodes != 1 or data_dir is not None:
            raise BrokerError("Tansu runs one node and keeps nothing on disk: --nodes and"
                              " --data-dir need the Apache Kafka broker")
        if extra_config:
            raise BrokerError("broker settings apply to the Apache Kafka broker only")
        return TansuBroker(host=host, port=port, log_path=log_path)
    if kind == "kafka":
        return KafkaBroker(host=host, port=port, nodes=nodes, data_dir=data_dir,
                           log_path=log_path, extra_config=dict(extra_config or {}))
    raise BrokerError(f"unknown broker kind {kind!r}: choose one of {', '.join(KINDS)}")


def describe(broker: KafkaBroker | TansuBroker) -> str:
    """One phrase for a person: which broker, how many nodes, where its data lives."""
    if isinstance(broker, TansuBroker):
        return "Tansu broker (pip-only fallback, in memory: a restart loses everything)"
    if broker.data_dir:
        where = f"data in {broker.data_dir}"
    elif broker.members:
        where = f"temporary data in {broker.members[0].root.parent}"
    else:
        where = "temporary data"
    nodes = f"{broker.nodes} nodes" if broker.nodes > 1 else "1 node"
    return f"Apache Kafka {broker.version} broker (KRaft, {nodes}, {where})"
