"""What the processor knows of a stage: its declaration (StageSpec), the handler it calls
per task and batch, and what that handler decides (router.records.StageResult). The loop
(processor.py) calls the handlers; the commit protocols (eos_commit.py, alo_commit.py) write
what they decided."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from aiokafka.structs import TopicPartition

from router.records import Record, StageResult
from router.worker.pipeline.core import TaskId
from router.worker.pipeline.store import StateView

Handler = Callable[[int, list[Record], StateView, datetime], StageResult]

# one task's decided batch, as the loop hands it to a commit protocol: the task, the epoch it
# was decided under, the next offset of each input partition, and what the handler decided
# (its writes end with the input offsets, the changelog's copy of them)
Decision = tuple[TaskId, int, dict[TopicPartition, int], StageResult]


@dataclass(frozen=True)
class DirectInput:
    """How a one-partition stage takes another stage's outputs to its topic in process, in the
    transaction that publishes them, when this worker owns its partition (processor.py
    `_direct`, txn_tuning: direct_delivery). `handle` gets them as records with offset -1 and
    must not count them as consumed; `published` gives the value the topic's copy carries
    instead, which the stage's own handler must skip when it reads it back (it is already
    applied, in the same transaction: the copy exists only if that transaction committed)."""

    handle: Handler
    published: Callable[[bytes], bytes]


@dataclass(frozen=True)
class StageSpec:
    """One stage of the pipeline as the processor runs it: its input topics (co-partitioned),
    its changelog, its handler, its partition count. A task is one StageSpec on one partition.

    Named StageSpec, not Stage: router.domain.events.Stage is the lead's stage (NEW, MQL, SQL),
    and the worker imports both. "Stage" stays the pipeline's word for the thing itself
    (TaskId.stage, LEADS, ROUTING); this is its declaration."""

    name: str
    topics: tuple[str, ...]
    changelog: str
    table: str  # label of the restored-records counter and of /ready
    handle: Handler
    partitions: int
    # forget in-memory state derived from the store (the routing stage keeps its whole state
    # in memory): called whenever the store is dropped or replaced, or a batch is abandoned
    forget: Callable[[int], None] = lambda _partition: None
    # None: other stages' outputs always reach this stage through its topic
    direct: DirectInput | None = None
