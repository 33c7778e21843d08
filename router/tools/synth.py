"""A synthetic NDJSON history (the demo's traffic model, spread over days) to measure replay.

    python -m router.tools.synth --events 1000000 --out /tmp/history.ndjson
    leadrouter simulate --history /tmp/history.ndjson --rules stricter.yaml --json

Deterministic for a seed. Sales answer some warm and hot leads a few hours after their last
touch (accept, reject with a reason, or release), so the simulator has verdicts to show.
"""

from __future__ import annotations

import argparse
import random
import sys
from datetime import UTC, datetime, timedelta
from typing import IO

import orjson

from router.tools.history import (
    ACCOUNTS,
    ACTIVITY,
    PROFILES,
    REPS,
    TOUCHPOINTS,
    HistoryRecord,
    record_line,
)
from router.tools.traffic_model import TrafficGenerator

REASONS = ["bad_timing", "no_fit", "could_not_reach", "no_budget", "wrong_role"]


def write_history(out: IO[bytes], events: int, leads: int, days: float, seed: int,
                  start: datetime) -> int:
    gen = TrafficGenerator(leads=leads, seed=seed, bad_event_share=0.002)
    rng = random.Random(seed)
    span = days * 86400.0
    header = {"leadrouter_history": 1, "from": None, "to": None,
              "exported_at": start.isoformat(), "source": f"synthetic seed {seed}",
              "topics": [TOUCHPOINTS, PROFILES, REPS, ACCOUNTS, ACTIVITY]}
    out.write(orjson.dumps(header) + b"\n")
    t0 = start.timestamp()
    written = 0
    offsets = {TOUCHPOINTS: 0, PROFILES: 0, ACTIVITY: 0, REPS: 0, ACCOUNTS: 0}

    def emit(topic: str, ts: float, key: bytes, value: bytes) -> None:
        nonlocal written
        out.write(record_line(HistoryRecord(topic, 0, offsets[topic], ts, key, value)))
        offsets[topic] += 1
        written += 1

    for key, value in gen.reps(start):
        emit(REPS, t0, key, value)
    for key, value in gen.named_accounts():
        emit(ACCOUNTS, t0, key, value)
    last_touch: dict[str, float] = {}
    sent = 0
    step = span / max(events, 1)
    while sent < events:
        ts = t0 + sent * step
        now = datetime.fromtimestamp(ts, UTC)
        for kind, key, value in gen.next_events(now):
            emit(TOUCHPOINTS if kind == "touchpoint" else PROFILES, ts, key, value)
            last_touch[key.decode()] = ts
            sent += 1
    temperament = {lead.lead_id: lead.temperament for lead in gen.population}
    for lead_id, ts in sorted(last_touch.items()):
        if temperament[lead_id] == "cold" or rng.random() < 0.3:
            continue
        at = ts + rng.uniform(600, 6 * 3600)
        roll = rng.random()
        kind, reason = (("accepted", None) if roll < 0.55 else
                        ("rejected", rng.choice(REASONS)) if roll < 0.85 else ("released", None))
        activity = {"event_id": f"sa-{lead_id}-{kind}", "lead_id": lead_id, "rep_id": "R-01",
                    "type": kind, "occurred_at": datetime.fromtimestamp(at, UTC).isoformat()}
        if reason:
            activity["reason"] = reason
        emit(ACTIVITY, at, lead_id.encode(), orjson.dumps(activity))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.tools.synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=50_000)
    parser.add_argument("--days", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    start = datetime.now(UTC) - timedelta(days=args.days)
    with open(args.out, "wb") as f:
        written = write_history(f, args.events, args.leads, args.days, args.seed, start)
    print(f"wrote {written:,} records to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
