"""The faust floor for `leadrouter bench`: a bare faust agent that reads a topic and does nothing.

    LEADROUTER_BROKER=kafka://127.0.0.1:9092 python -m router.harness.bench.floor \
        --topic bench.leads.touchpoints --app-id bench-floor-take --mode take

Same broker settings as the router's worker had on faust (bench/faust_floor_app.py): memory
store, the lowered fetch wait (`lower_fetch_wait`), at-least-once with a 1 s commit interval,
raw key and value serializers, and the worker's batch size and wait. Settings come from the
same `LEADROUTER_*` environment variables. `--mode take` reads with `take_events` like the
router's faust agents did; `--mode iter` with a plain `async for`. The bench (bench/phases.py)
counts progress from the offsets this consumer group commits, exactly as it does for the
router, so both are measured the same way.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import faust

from router.harness.bench.faust_floor_app import lower_fetch_wait, new_faust_app
from router.settings import Settings, from_env

MODES = ("take", "iter")


def build_floor_app(settings: Settings, topic: str, app_id: str, mode: str) -> faust.App:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    lower_fetch_wait(settings.fetch_wait_ms())
    s = settings
    Path(s.data_dir).mkdir(parents=True, exist_ok=True)
    app = new_faust_app(s, app_id, web_enabled=False, store="memory://")
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", partitions=s.partitions)
    batch_size = s.batch_size
    batch_wait = s.batch_wait_ms / 1000.0

    async def floor_take(stream: Any) -> None:
        async for _events in stream.take_events(batch_size, within=batch_wait):
            pass

    async def floor_iter(stream: Any) -> None:
        async for _value in stream:
            pass

    # not decorator syntax: faust's decorators are untyped (mypy --strict)
    app.agent(source, name="floor")(floor_take if mode == "take" else floor_iter)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.harness.bench.floor",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--topic", required=True, help="topic to read (must exist)")
    parser.add_argument("--app-id", required=True, help="faust app id = consumer group")
    parser.add_argument("--mode", choices=MODES, default="take")
    args = parser.parse_args(argv)
    settings = from_env()
    logging.basicConfig(level=logging.WARNING)
    app = build_floor_app(settings, args.topic, args.app_id, args.mode)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
