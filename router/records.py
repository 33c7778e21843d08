"""The record types every stage and the partition processor exchange: a raw input `Record`
as fetched, and an `Output` to publish.

Neutral on purpose: the generic pipeline (router/worker/pipeline/) hands `Record`s to the
stages' handlers and publishes their `Output`s, and the stages (router/service/) build them;
neither side depends on the other, and nothing here knows a domain type or Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class Output:
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None  # None: the producer's partitioner picks it from the key


@dataclass(slots=True)
class StageResult:
    """What a stage decided for one batch of one task: the outputs to publish and the state
    writes (key, value; None deletes), committed together with the batch's input offsets."""

    outputs: list[Output] = field(default_factory=list)
    writes: list[tuple[bytes, bytes | None]] = field(default_factory=list)
