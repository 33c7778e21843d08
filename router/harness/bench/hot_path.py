"""The leads stage's hot path alone: `Qualifier.process` over a synthetic history, no Kafka.

    python -m router.tools.synth --events 200000 --out h.ndjson
    python -m router.harness.bench.hot_path --history h.ndjson

Touchpoints and profiles are handed over in record-time order, in batches as the worker takes
them, with lead states kept as bytes in a dict as the memory store keeps them. It prints the
events per second of CPU time (steadier than wall time on a shared machine) and a digest of
every output and every final state: two commits that decide alike print the same digest, so
a speed-up can be checked for changed decisions in the same run that measures it.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from datetime import UTC, datetime

from router.adapters.topics import Topics
from router.domain.rules import load_rules
from router.gc_tuning import tune_for_throughput
from router.records import Record
from router.service.qualifier import Qualifier
from router.tools.history import PROFILES, TOUCHPOINTS, read_ndjson


def measure(history: str, rules_file: str | None = None, batch: int = 500,
            tune_gc: bool = True) -> tuple[int, float, str]:
    """(events, CPU seconds, digest of the outputs and final states)."""
    rules = load_rules(rules_file)
    loaded = read_ndjson(history, (TOUCHPOINTS, PROFILES))
    ordered = sorted([*loaded.topic(PROFILES), *loaded.topic(TOUCHPOINTS)],
                     key=lambda r: (r.timestamp, r.topic))
    topics = Topics.with_prefix("")
    # the router reads them under these names; a second after the record's time is "now"
    records = [Record(topics.touchpoints if r.topic == TOUCHPOINTS else topics.profiles,
                      0, n, r.key, r.value) for n, r in enumerate(ordered)]
    nows = [datetime.fromtimestamp(r.timestamp + 1, UTC) for r in ordered]
    del loaded, ordered
    if tune_gc:
        tune_for_throughput()  # as the worker does after its start-up
    qualifier = Qualifier(rules, topics, "hot-path", lambda _domain: False)
    store: dict[bytes, bytes] = {}
    digest = hashlib.sha256()
    started = time.process_time()
    for first in range(0, len(records), batch):
        chunk = records[first:first + batch]
        result = qualifier.process(chunk, nows[first + len(chunk) - 1], store.get)
        for out in result.outputs:
            digest.update(out.topic.encode() + b"\0" + (out.key or b"") + b"\0" + out.value)
        for key, value in result.writes:
            if value is not None:
                store[key] = value
    seconds = time.process_time() - started
    for key in sorted(store):
        digest.update(key + b"\0" + store[key])
    return len(records), seconds, digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", required=True, help="an NDJSON history (tools/synth.py)")
    parser.add_argument("--rules", default=None, help="rules file (default: the defaults)")
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args(argv)
    events, seconds, digest = measure(args.history, args.rules, args.batch)
    print(f"{events:,} events in {seconds:.2f} s of CPU: {events / seconds:,.0f} events/s;"
          f" outputs and states digest {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
