"""router.harness.bench.hot_path: its digest tells two runs that decide alike from two that
do not, which is what makes its speed figures comparable across commits."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from router.domain.rules import default_rules_text
from router.harness.bench.hot_path import measure
from router.tools.synth import write_history

START = datetime(2026, 10, 1, tzinfo=UTC)


def test_the_same_history_and_rules_give_the_same_digest_and_other_rules_another(
        tmp_path: Path) -> None:
    history = tmp_path / "h.ndjson"
    with history.open("wb") as out:
        write_history(out, events=3000, leads=200, days=20, seed=7, start=START)
    events, seconds, digest = measure(str(history), tune_gc=False)
    assert events > 2500 and seconds > 0
    assert measure(str(history), tune_gc=False)[2] == digest  # deterministic
    looser = tmp_path / "looser.yaml"
    looser.write_text(default_rules_text().replace("sql_min_touchpoints: 4",
                                                   "sql_min_touchpoints: 2"))
    assert measure(str(history), str(looser), tune_gc=False)[2] != digest
