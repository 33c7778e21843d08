"""Running workers as child processes on this machine: the demo, benchmarks and tests use it.

A worker runs as its own process (exactly as `leadrouter worker` does in production), so the
tests exercise the real CLI, settings and worker, and can SIGKILL it like a crash would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from router.harness.brokers import KafkaBroker, TansuBroker, free_port, local_broker
from router.harness.brokers.common import die_with_parent


@dataclass
class WorkerProcess:
    broker_url: str
    log_path: Path
    web_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> WorkerProcess:
        if not self.web_port:
            self.web_port = free_port()
        env = dict(os.environ)
        env.update(
            {
                "LEADROUTER_BROKER": self.broker_url,
                "LEADROUTER_WEB_PORT": str(self.web_port),
                "LEADROUTER_LOG_FORMAT": "text",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "router", "worker"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as resp:
                return resp.status, orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read() or b"null")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"worker exited early; see {self.log_path}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                status, _ = self.get("/ready", timeout=1.0)
                if status == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout:.0f} s; see {self.log_path}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, like a crash: no shutdown hooks, no final commit."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def local_router(workdir: Path, name: str, env: dict[str, str] | None = None,
                 ready_timeout: float = 90, kind: str | None = None,
                 broker_config: dict[str, str] | None = None
                 ) -> Iterator[tuple[KafkaBroker | TansuBroker, WorkerProcess]]:
    """A local broker (`kind`, default LEADROUTER_LOCAL_BROKER) and one ready worker, both
    stopped on exit (benchmarks use it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with local_broker(kind, log_path=workdir / f"{name}-broker.log",
                      extra_config=broker_config) as broker:
        worker = WorkerProcess(broker.url, workdir / f"{name}-worker.log", env=env or {})
        try:
            worker.start()
            worker.wait_ready(ready_timeout)
            yield broker, worker
        finally:
            worker.stop()
