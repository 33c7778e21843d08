"""The processor's two loggers, which the loop, the restore and both commit protocols write
to: `log` (its records keep the name router.worker.pipeline.processor, which they had before
the processor was split into modules) and `trace`, router.trace (LEADROUTER_TRACE=1: chaos
forensics and the hop breakdown; router/harness/chaos/traces.py reads its records back)."""

from __future__ import annotations

import logging
import os

from aiokafka.structs import TopicPartition

log = logging.getLogger("router.worker.pipeline.processor")
trace = logging.getLogger("router.trace")
trace.setLevel(logging.DEBUG if os.environ.get("LEADROUTER_TRACE") == "1" else logging.INFO)


def tp_name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


def trace_commit(generation: int, offsets: dict[TopicPartition, int]) -> None:
    if trace.isEnabledFor(logging.DEBUG):
        trace.debug("commit", extra={"ok": True, "generation": generation,
                                     "offsets": {tp_name(tp): o for tp, o in offsets.items()}})
