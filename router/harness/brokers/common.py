"""What every local broker launcher shares: the error type, free ports, readiness probes."""

from __future__ import annotations

import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
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
