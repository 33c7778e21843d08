"""The short fault-injection run (the full one is `make chaos`): traffic on 8 partitions with
2-3 workers; a worker is SIGKILLed and restarted, another joins; then the independent verifier
replays the inputs through the pure rules and checks every output invariant (SPEC §6)."""

from __future__ import annotations

from pathlib import Path

from router.harness.chaos.run import run_chaos
from router.harness.chaos.session import longest_stall


async def test_kill_restart_and_join_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    report, run = await run_chaos(full=False, workdir=tmp_path, rate=40.0, log=lines.append)
    summary = "\n".join(lines) + "\n" + report.render()
    assert run.sent > 1000, summary
    assert report.counts["leads checked against the rules"] > 100, summary
    assert report.violations == [], summary
    for fault in run.faults:
        assert fault.resume_assigned_s is not None, f"{fault.fault} never resumed\n{summary}"
    print(summary)
    print(f"longest gap between outputs: {longest_stall(run.output_times):.1f} s")
