"""`leadrouter export`: the history of a time range as NDJSON, for simulate/report offline.

    leadrouter export --since 30d > history.ndjson

Writes the inputs (touchpoints, profiles, reps, accounts, sales activity) and, unless
`--inputs-only`, the outputs the weekly report reads (transitions, assignments, SLA events).
The roster and the accounts are written whole (they are state, not events). Reading is bounded
by the end offsets taken at the start, so exporting from a live deployment finishes.
"""

from __future__ import annotations

import sys
from typing import IO

from router.tools.history import (
    INPUT_TOPICS,
    OUTPUT_TOPICS,
    History,
    HistoryError,
    load_history,
    time_range,
    write_ndjson,
)


def run_export(*, since: str | None, start: str | None, end: str | None, broker: str,
               prefix: str, out: str | None, inputs_only: bool) -> int:
    topics = INPUT_TOPICS if inputs_only else (*INPUT_TOPICS, *OUTPUT_TOPICS)
    try:
        rng = time_range(since, start, end)
        history = load_history(None, broker, prefix, topics, rng)
    except HistoryError as exc:
        print(f"leadrouter export: {exc}", file=sys.stderr)
        return 2
    if out is None:
        written = _write(history, sys.stdout.buffer, topics)
    else:
        with open(out, "wb") as f:
            written = _write(history, f, topics)
    counts = ", ".join(f"{name} {len(history.topic(name))}" for name in topics)
    print(f"leadrouter export: {written} records ({counts}) from {rng.describe()}",
          file=sys.stderr)
    return 0


def _write(history: History, stream: IO[bytes], topics: tuple[str, ...]) -> int:
    written = write_ndjson(history, stream, topics)
    stream.flush()
    return written
