"""Worker settings: `LEADROUTER_*` environment variables, each with a matching CLI flag.

One table (`FIELDS`) drives both, so the README, `--help` and the environment cannot disagree.
Precedence: CLI flag > environment variable > default.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    broker: str = "kafka://127.0.0.1:9092"
    rules: str | None = None
    topic_prefix: str = ""
    data_dir: str = ".leadrouter"
    store: str = "memory"
    rocksdb_memory_mb: int = 256
    processing_guarantee: str = "auto"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    web_advertised_url: str = ""
    partitions: int = 8
    replication_factor: int = 1
    broker_quirks: str = "auto"
    broker_wait_seconds: float = 60.0
    session_timeout_seconds: float = 10.0
    fetch_max_wait_ms: int = 0  # 0: chosen for the broker, see fetch_wait_ms()
    compacted_segment_ms: int = 3_600_000
    batch_size: int = 2000
    batch_wait_ms: int = 10
    producer_batch_bytes: int = 1_000_000
    misplaced_records: str = "repartition"
    log_format: str = "json"
    log_level: str = "info"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = ""
    sasl_password_file: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError("partitions must be at least 1")
        if not 1024 <= self.producer_batch_bytes <= MAX_PRODUCER_BATCH_BYTES:
            raise ValueError(f"producer_batch_bytes must be between 1024 and"
                             f" {MAX_PRODUCER_BATCH_BYTES:,} (a broker refuses a record batch"
                             f" above a topic's max.message.bytes), not"
                             f" {self.producer_batch_bytes}")
        if self.rocksdb_memory_mb < 8:
            raise ValueError("rocksdb_memory_mb must be at least 8")
        if self.store not in STORES:
            raise ValueError(f"store must be one of {', '.join(STORES)}, not {self.store!r}")
        if self.processing_guarantee not in PROCESSING_GUARANTEES:
            raise ValueError(f"processing_guarantee must be one of"
                             f" {', '.join(PROCESSING_GUARANTEES)},"
                             f" not {self.processing_guarantee!r}")
        if self.broker_quirks not in BROKER_QUIRKS:
            raise ValueError(f"broker_quirks must be one of {', '.join(BROKER_QUIRKS)},"
                             f" not {self.broker_quirks!r}")
        if self.misplaced_records not in MISPLACED_RECORDS:
            raise ValueError(f"misplaced_records must be one of {', '.join(MISPLACED_RECORDS)},"
                             f" not {self.misplaced_records!r}")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"log_format must be 'json' or 'text', not {self.log_format!r}")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)},"
                             f" not {self.security_protocol!r}")
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"sasl_mechanism must be one of {', '.join(SASL_MECHANISMS)},"
                             f" not {self.sasl_mechanism!r}")
        if self.security_protocol.startswith("SASL") and not self.sasl_username:
            raise ValueError("SASL needs LEADROUTER_SASL_USERNAME (and a password from"
                             " LEADROUTER_SASL_PASSWORD or LEADROUTER_SASL_PASSWORD_FILE)")

    def fetch_wait_ms(self) -> int:
        """The fetch wait to use: as set, or for the broker once the worker recognised it."""
        if self.fetch_max_wait_ms > 0:
            return self.fetch_max_wait_ms
        return TANSU_FETCH_WAIT_MS if self.broker_quirks == "tansu" else KAFKA_FETCH_WAIT_MS

    def password(self) -> str:
        """The SASL password: from the environment or a file (a mounted secret), never from
        the rules file or a command-line flag that `ps` would show."""
        if self.sasl_password_file:
            return Path(self.sasl_password_file).read_text(encoding="utf-8").strip()
        return self.sasl_password

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.security_protocol.endswith("SSL"):
            return None
        context = ssl.create_default_context(cafile=self.ssl_cafile or None)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None)
        return context

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Connection security for every aiokafka client the router makes."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.security_protocol.startswith("SASL"):
            kwargs.update(sasl_mechanism=self.sasl_mechanism,
                          sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self.password())
        return kwargs

    def advertised_url(self) -> str:
        """Where the other workers reach this worker's HTTP views. Binding all interfaces
        says nothing about how to be reached, so the host name stands in (in a StatefulSet
        pod behind a headless service the fully qualified one resolves cluster-wide)."""
        if self.web_advertised_url:
            return self.web_advertised_url.rstrip("/")
        host = self.web_host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        return f"http://{host}:{self.web_port}"

    @property
    def app_id(self) -> str:
        return f"{self.topic_prefix}leadrouter"


BROKER_QUIRKS = ("auto", "tansu", "none")
# tests/integration/test_broker_audit.py: with a 2 s wait Kafka still delivers in ~10 ms; Tansu
# delivers anywhere inside the wait (BROKER.md), and below ~100 ms it returned nothing at all
KAFKA_FETCH_WAIT_MS = 500
TANSU_FETCH_WAIT_MS = 100
PROCESSING_GUARANTEES = ("auto", "exactly_once", "at_least_once")
MISPLACED_RECORDS = ("repartition", "in_place")


HELP: dict[str, str] = {
    "broker": "Kafka bootstrap URL, e.g. kafka://host:9092 (several: kafka://h1:9092;h2:9092)",
    "rules": "rules file (YAML); default: the shipped SPEC defaults",
    "topic_prefix": "prefix prepended to every topic name, internal ones included",
    "data_dir": "directory for local state (RocksDB files with --store rocksdb)",
    "store": "memory (state rebuilt from the changelogs at start) or rocksdb (kept in"
             " data_dir: a restart replays only the changelog tail)",
    "rocksdb_memory_mb": "with --store rocksdb: the worker's whole RocksDB memory (one block"
                         " cache shared by its tasks, half of it for memtables); 256 kept a"
                         " worker with a million leads at 548 MB RSS",
    "processing_guarantee": "auto (exactly_once on Apache Kafka, at_least_once on Tansu, which"
                            " has no transactions), exactly_once (outputs, state and offsets"
                            " in one Kafka transaction per partition and batch; downstream"
                            " readers need isolation.level=read_committed) or at_least_once"
                            " (deterministic output ids; readers drop repeats)",
    "web_host": "address the HTTP server binds to (/health, /ready)",
    "web_port": "HTTP port of the worker",
    "web_advertised_url": "URL other workers use to reach this one (lead views are answered"
                          " by the owner); default http://<web host or, when binding all"
                          " interfaces, this host's name>:<web port>",
    "partitions": "partitions for topics the router creates",
    "replication_factor": "replication factor for topics the router creates",
    "broker_quirks": "auto (recognise the broker at start and switch on its workarounds),"
                     " tansu (insist on the Tansu fallback broker) or none (insist on a"
                     " broker that needs none: the worker refuses to start on Tansu)",
    "broker_wait_seconds": "how long to wait for the broker at start before giving up",
    "session_timeout_seconds": "consumer-group session timeout (failover time after a crash)",
    "fetch_max_wait_ms": "longest a fetch waits for data; 0 (default) chooses for the broker:"
                         " 500 on Apache Kafka (it answers as soon as data arrives, so this"
                         " only paces idle polls), 100 on Tansu (it holds every fetch for"
                         " its whole wait, so this is the latency floor per hop)",
    "compacted_segment_ms": "segment.ms of the compacted topics the router creates (roster,"
                            " accounts, state changelogs): Kafka compacts closed segments"
                            " only, so this bounds how much history a restore replays",
    "batch_size": "most events per partition in one batch (one transaction per partition"
                  " and batch with exactly-once)",
    "batch_wait_ms": "how long a batch waits to fill before it is processed",
    "producer_batch_bytes": "largest record batch the worker's producers send to one"
                            " partition; keep it at or below the max.message.bytes of every"
                            " topic the worker writes (Kafka's default 1,048,588)",
    "misplaced_records": "a touchpoint or profile whose key does not hash (murmur2, Kafka's"
                         " default partitioner) to the partition it arrived on:"
                         " repartition (default: forwarded to the partition its lead lives"
                         " on, in the same transaction, so a lead fed by producers with"
                         " different partitioners stays whole) or in_place (processed where"
                         " it arrived, only counted: for producers that all agree)",
    "log_format": "json (one object per line) or text",
    "log_level": "debug, info, warning or error",
    "security_protocol": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    "sasl_mechanism": "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
    "sasl_username": "SASL user name",
    "sasl_password": "SASL password (environment only; prefer the _FILE form)",
    "sasl_password_file": "file holding the SASL password (e.g. a mounted secret)",
    "ssl_cafile": "CA bundle to verify the brokers (default: system CAs)",
    "ssl_certfile": "client certificate for mutual TLS",
    "ssl_keyfile": "client key for mutual TLS",
}
STORES = ("memory", "rocksdb")
MAX_PRODUCER_BATCH_BYTES = 16 * 1024 * 1024
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SECRET_FIELDS = frozenset({"sasl_password"})


def env_name(name: str) -> str:
    return f"LEADROUTER_{name.upper()}"


def _convert(kind: Any, raw: str, name: str) -> Any:
    target = kind if isinstance(kind, type) else str
    try:
        if target is int:
            return int(raw)
        if target is float:
            return float(raw)
    except ValueError:
        raise ValueError(f"{env_name(name)}={raw!r}: expected a {target.__name__}") from None
    return raw


def _field_type(f: Any) -> type:
    text = str(f.type)
    if text.startswith("int"):
        return int
    if text.startswith("float"):
        return float
    return str


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(env_name(f.name))
        if raw is not None and raw != "":
            values[f.name] = _convert(_field_type(f), raw, f.name)
    return Settings(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(Settings):
        if f.name in SECRET_FIELDS:
            continue  # secrets come from the environment or a file, never from argv
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=f.name,
            type=_field_type(f),
            default=None,
            help=f"{HELP[f.name]} [env {env_name(f.name)}; default {f.default!r}]",
        )


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    base = from_env(environ)
    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(Settings)
        if getattr(args, f.name, None) is not None
    }
    return replace(base, **overrides)


def bootstrap_servers(url: str) -> list[str]:
    """`kafka://h1:9092;kafka://h2:9092` -> ['h1:9092', 'h2:9092'] for aiokafka."""
    servers = []
    for part in url.replace(",", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        if "://" in part:
            part = part.split("://", 1)[1]
        part = part.rstrip("/")
        if ":" not in part:
            part += ":9092"
        servers.append(part)
    if not servers:
        raise ValueError(f"no broker address in {url!r}")
    return servers
