"""`leadrouter bench --quick` end to end: its own embedded broker, every phase on a small load.

Not a performance test: it only checks that every figure comes out (a positive number in the
JSON line), that the table is printed, and that nothing the bench started outlives it. About
70 s on a quiet 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from router.harness.bench.report import REQUIRED_KEYS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _pids(workdir: Path) -> list[int]:
    """The pids the bench logged for the processes it started."""
    return [int(line.split("(pid ")[1].split(",")[0])
            for line in (workdir / "stderr.txt").read_text().splitlines() if "(pid " in line]


def test_quick_bench_reports_every_figure(tmp_path: Path) -> None:
    with open(tmp_path / "stderr.txt", "wb") as err:
        done = subprocess.run([sys.executable, "-m", "router", "bench", "--quick"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, timeout=200,
                              check=False)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert done.returncode == 0, stderr[-3000:]
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("leadrouter bench (quick)")
    data = orjson.loads(lines[-1])
    assert data["bench"] == "leadrouter"
    bad = {k: data.get(k) for k in REQUIRED_KEYS
           if not isinstance(data.get(k), int | float) or data[k] <= 0}
    assert not bad, bad
    assert data["sql_received"] == data["latency_probes"]
    pids = _pids(tmp_path)
    assert len(pids) >= 6  # r1 worker, floor x2, restored worker, r2 workers x2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
