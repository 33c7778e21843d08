"""What every local broker launcher shares: the error type, free ports, readiness probes."""

from __future__ import annotations

import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class BrokerError(RuntimeError):
    """A broker cannot be found, installed or started; the message says what to do."""


class LocalBroker(Protocol):
    """The face the demo, chaos, benchmarks and tests use, whatever runs underneath."""

    kind: str

    @property
    def url(self) -> str: ...

    @property
    def bootstrap(self) -> str: ...

    def start(self) -> LocalBroker: ...

    def stop(self, timeout: float = ...) -> None: ...

    def alive(self) -> bool: ...


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1", avoid: frozenset[int] = frozenset()
               ) -> list[int]:
    """`count` distinct free ports. All are held open until all are chosen: asking one at a
    time can hand out the same port twice (it is free again once the probe closes), which
    gave a node the same port for its broker and controller listeners."""
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            if int(s.getsockname()[1]) in avoid:
                held.append(s)  # keep it bound so it is not offered again, but skip it
                count += 1
                continue
            held.append(s)
        return [int(s.getsockname()[1]) for s in held
                if int(s.getsockname()[1]) not in avoid]
    finally:
        for s in held:
            s.close()


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def answers_api_versions(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when a Kafka broker on host:port answers an ApiVersions v0 request with error 0.

    An open port is not a ready broker: a KRaft broker accepts connections before it has
    caught up with the metadata log, and answers requests only after that."""
    client_id = b"leadrouter-probe"
    # request header v1: api_key=18 (ApiVersions), api_version=0, correlation_id, client_id
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack(">i", len(body)) + body)
            header = _read_exactly(s, 4)
            (size,) = struct.unpack(">i", header)
            payload = _read_exactly(s, size)
    except OSError:
        return False
    if len(payload) < 6:
        return False
    correlation_id, error_code = struct.unpack(">ih", payload[:6])
    return bool(correlation_id == 7 and error_code == 0)


@dataclass(frozen=True)
class MetadataView:
    """The broker ids and the controller id one broker puts in its Metadata answer."""

    brokers: frozenset[int]
    controller: int

    def lists(self, expected: frozenset[int]) -> bool:
        """True when every expected broker is listed and the controller is one of those
        listed: what an admin client needs to send CreateTopics (aiokafka's admin looks the
        controller up among the brokers and fails on `None.nodeId` when it is not there)."""
        return expected <= self.brokers and self.controller in self.brokers

    def describe(self) -> str:
        return f"brokers {sorted(self.brokers)} and controller {self.controller}"


def metadata_request(correlation_id: int, client_id: bytes = b"leadrouter-probe") -> bytes:
    """A framed Metadata v4 request for no topics (v4: Kafka 3.x and 4.x both answer it)."""
    # request header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id;
    # body: topics = empty array (no topics, brokers and controller only), no auto-create
    body = (struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
            + struct.pack(">ib", 0, 0))
    return struct.pack(">i", len(body)) + body


def parse_metadata_response(payload: bytes, correlation_id: int) -> MetadataView:
    """The brokers and controller of a Metadata v4 response (without its size prefix).

    Raises ValueError on a frame that is not the answer to `correlation_id`."""
    offset = 0

    def take(fmt: str) -> int:
        nonlocal offset
        (value,) = struct.unpack_from(fmt, payload, offset)
        offset += struct.calcsize(fmt)
        return int(value)

    def skip_string() -> None:
        nonlocal offset
        length = take(">h")
        offset += max(length, 0)  # -1: a null string

    try:
        if take(">i") != correlation_id:
            raise ValueError("the answer is not to this request")
        take(">i")  # throttle_time_ms
        brokers = set()
        for _ in range(take(">i")):
            brokers.add(take(">i"))  # node_id
            skip_string()  # host
            take(">i")  # port
            skip_string()  # rack
        skip_string()  # cluster_id
        controller = take(">i")
    except struct.error as exc:
        raise ValueError(f"a truncated Metadata response: {exc}") from None
    return MetadataView(frozenset(brokers), controller)


def broker_metadata(host: str, port: int, timeout: float = 2.0) -> MetadataView | None:
    """What host:port answers a Metadata request with, or None when it does not answer.

    A KRaft broker that logged "Kafka Server started" and answers ApiVersions may still
    answer Metadata with no brokers, or without the ones that registered last, for a moment:
    its copy of the metadata log lags the controller's. A client bootstrapping then knows no
    controller, and aiokafka's create_topics fails with an AttributeError."""
    correlation_id = 11
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(metadata_request(correlation_id))
            (size,) = struct.unpack(">i", _read_exactly(s, 4))
            payload = _read_exactly(s, size)
        return parse_metadata_response(payload, correlation_id)
    except (OSError, ValueError):
        return None


def _read_exactly(s: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = s.recv(n - len(chunks))
        if not chunk:
            raise OSError("connection closed")
        chunks.extend(chunk)
    return bytes(chunks)


def die_with_parent() -> Callable[[], None] | None:
    """The `preexec_fn` for a process a launcher starts: on Linux the child gets SIGTERM when
    its parent dies (even by SIGKILL), so a crashed test run or demo leaves no broker or worker
    behind. Only from the main thread: Linux ties the signal to the thread that forked, and a
    pool thread that ends would take a healthy child with it."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    return _set_parent_death_signal


def _set_parent_death_signal() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
