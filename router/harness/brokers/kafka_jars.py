"""Apache Kafka's broker jars, resolved once from Maven Central into a cache outside the repo.

No Docker and no tarball: Maven resolves `org.apache.kafka:kafka_2.13` at the pinned version
with its dependencies (checking Maven Central's checksums, `--strict-checksums`), and then every
jar is checked against the SHA-256 list committed beside this file (`kafka-<version>.sha256`),
so a changed or extra jar is refused, not run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from router.harness.brokers.common import BrokerError

# 3.9.1 is the pin: every test of this project passes on it and on 4.1.1 alike (see the README,
# "Which Kafka"), and 3.9 still accepts every old request version, so a client that lags
# behind (aiokafka, faust) cannot meet a KIP-896 removal on the broker we prove things on.
KAFKA_VERSION = os.environ.get("LEADROUTER_KAFKA_VERSION", "3.9.1")


@dataclass(frozen=True)
class LoggingBackend:
    """How one Kafka line logs: 3.9 needs a backend added (reload4j), 4.x ships log4j2."""

    dependencies: tuple[tuple[str, str, str], ...]
    system_property: str
    config_name: str
    config_text: str


RELOAD4J = LoggingBackend(
    dependencies=(("org.slf4j", "slf4j-reload4j", "1.7.36"),
                  ("ch.qos.reload4j", "reload4j", "1.2.25")),
    system_property="log4j.configuration",
    config_name="log4j.properties",
    config_text="""\
log4j.rootLogger=WARN, stdout
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
log4j.logger.kafka.server.ControllerServer=INFO
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
""",
)

LOG4J2 = LoggingBackend(
    dependencies=(("org.apache.logging.log4j", "log4j-slf4j-impl", "2.24.3"),
                  ("org.apache.logging.log4j", "log4j-core", "2.24.3")),
    system_property="log4j2.configurationFile",
    config_name="log4j2.properties",
    config_text="""\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
""",
)


def logging_backend(version: str) -> LoggingBackend:
    return RELOAD4J if version.startswith("3.") else LOG4J2


POM_TEMPLATE = """\
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>leadrouter</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""


def cache_root() -> Path:
    override = os.environ.get("LEADROUTER_CACHE_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "leadrouter"


def expected_digests(version: str) -> dict[str, str]:
    """The committed jar list for `version`: {file name: sha256}."""
    name = f"kafka-{version}.sha256"
    ref = resources.files("router.harness.brokers") / name
    if not ref.is_file():
        raise BrokerError(
            f"no jar checksum list {name} for Kafka {version} in router/harness/brokers/;"
            " the pinned versions are the ones with a list there"
            " (`leadrouter broker --lock-jars` writes one after a first trusted resolve)"
        )
    digests: dict[str, str] = {}
    for line in ref.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            digest, file_name = line.split()
            digests[file_name] = digest
    return digests


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def require_command(name: str, what: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BrokerError(
            f"`{name}` is not on PATH; the Apache Kafka broker needs {what}. Install it"
            " (Debian/Ubuntu: `apt-get install openjdk-17-jre-headless maven`; macOS:"
            " `brew install openjdk@17 maven`), or use the pip-only fallback broker with"
            " `--kind tansu` / LEADROUTER_LOCAL_BROKER=tansu"
        )
    return found


def java_major_version(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    text = out.stderr + out.stdout
    # 'openjdk version "17.0.15" 2025-04-15' or 'java version "1.8.0_392"'
    for token in text.split('"')[1:2]:
        parts = token.split(".")
        major = parts[1] if parts[0] == "1" and len(parts) > 1 else parts[0]
        if major.isdigit():
            return int(major)
    raise BrokerError(f"cannot read the Java version from `{java} -version`: {text.strip()}")


def jar_dir(version: str = KAFKA_VERSION, *, progress: bool = True) -> Path:
    """The folder of verified jars for `version`, resolving them on first use."""
    java = require_command("java", "Java 17 or newer")
    major = java_major_version(java)
    if major < 17:
        raise BrokerError(f"{java} is Java {major}; Apache Kafka {version} needs Java 17+"
                          " (Debian: `apt-get install openjdk-17-jre-headless`)")
    target = cache_root() / f"kafka-{version}"
    jars = target / "jars"
    stamp = target / "verified"
    expected = expected_digests(version)
    lock_digest = hashlib.sha256(repr(sorted(expected.items())).encode()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == lock_digest:
        return jars
    with exclusive(target / ".resolve.lock"):  # parallel test processes resolve it once
        if stamp.is_file() and stamp.read_text().strip() == lock_digest:
            return jars
        _resolve_verified(version, target, jars, expected, progress)
        stamp.write_text(lock_digest + "\n")
    return jars


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _resolve_verified(version: str, target: Path, jars: Path, expected: dict[str, str],
                      progress: bool) -> None:
    if progress:
        print(f"leadrouter: resolving Apache Kafka {version} ({len(expected)} jars, about"
              f" 50 MB) from Maven Central into {target} (first run only)...",
              file=sys.stderr, flush=True)
    resolve(version, jars)
    verify(jars, expected)
    if progress:
        print(f"leadrouter: Apache Kafka {version} jars verified ({len(expected)} SHA-256"
              " checksums)", file=sys.stderr, flush=True)


def resolve(version: str, jars: Path) -> None:
    mvn = require_command("mvn", "Apache Maven to fetch its jars from Maven Central")
    deps = [("org.apache.kafka", "kafka_2.13", version), *logging_backend(version).dependencies]
    dependencies = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>" for g, a, v in deps
    )
    if jars.exists():
        shutil.rmtree(jars)
    jars.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="leadrouter-mvn-") as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(POM_TEMPLATE.format(dependencies=dependencies))
        command = [mvn, "-q", "-B", "--strict-checksums", "-f", str(pom),
                   "dependency:copy-dependencies", "-Dmdep.includeScope=runtime",
                   f"-DoutputDirectory={jars}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise BrokerError(f"`{' '.join(command)}` did not finish in 15 minutes; is Maven"
                              " Central reachable from here?") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise BrokerError(
            f"Maven could not resolve org.apache.kafka:kafka_2.13:{version} (exit"
            f" {done.returncode}); it needs Maven Central (or a mirror in ~/.m2/settings.xml)."
            f" Its last lines:\n{tail}"
        )


def verify(jars: Path, expected: dict[str, str]) -> None:
    found = {p.name: p for p in jars.glob("*.jar")}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(name for name, path in found.items()
                   if name in expected and sha256(path) != expected[name])
    if missing or extra or wrong:
        shutil.rmtree(jars, ignore_errors=True)
        raise BrokerError(
            f"the resolved Kafka jars in {jars} do not match the committed checksum list"
            f" (missing: {missing or 'none'}; unexpected: {extra or 'none'}; changed:"
            f" {wrong or 'none'}); they were removed. Nothing was run."
        )


def write_lock(version: str, jars: Path, out: Path) -> None:
    """Write the checksum list of a trusted resolve (for a new pinned version)."""
    lines = [f"# SHA-256 of the jars of org.apache.kafka:kafka_2.13:{version} and its logging"
             " backend, as resolved from Maven Central"]
    lines += [f"{sha256(p)}  {p.name}" for p in sorted(jars.glob("*.jar"))]
    out.write_text("\n".join(lines) + "\n")
