"""The qualification handler: a batch of raw input records in, state writes and outputs out.

No Kafka here: the partition processor (router/worker/pipeline) hands the leads stage
(router/service/leads_stage.py) records and publishes what we return, so this layer is tested
with plain lists. Per batch, each lead's state is decoded once,
every event for it is applied in offset order, and it is encoded once: one state write per key
per batch, which is what keeps the per-event cost low.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from router.adapters.topics import Topics
from router.adapters.wire import (
    Refused,
    dead_letter,
    dead_letter_key,
    decode_profile,
    decode_touchpoint,
    encode,
)
from router.domain.criteria import account_domain
from router.domain.decay import DECAYED, apply_decay, decay_deadline
from router.domain.events import LeadProfile, Stage, Touchpoint, Transition
from router.domain.handover import sla_class
from router.domain.lead_state import LeadState
from router.domain.qualification import (
    Context,
    apply_profile,
    apply_recycle,
    apply_touchpoint,
    transition_id,
)
from router.domain.routing_state import RouteRequest
from router.domain.rules import Rules
from router.metrics import DEAD_LETTERS, PROFILES, RECYCLED, TOUCHPOINTS, TRANSITIONS
from router.records import Output, Record, StageResult
from router.service.decay_index import DecayIndex

log = logging.getLogger(__name__)


def route_request(state: LeadState, now: datetime) -> RouteRequest:
    """What the routing stage needs to know about a lead that just became SQL."""
    profile = state.profile or {}
    company = profile.get("company") or {}
    domains = [d for d in (account_domain(state), company.get("domain")) if isinstance(d, str)]
    return RouteRequest(
        lead_id=state.lead_id,
        cycle=state.cycle,
        sla_class=sla_class(state),
        country=profile.get("country"),
        language=profile.get("language"),
        employees=company.get("employees"),
        account_domains=tuple(dict.fromkeys(d.lower() for d in domains)),
        sql_event_id=transition_id(state.lead_id, state.cycle, Stage.SQL),
        received_at=now.timestamp(),
    )


@dataclass(slots=True)
class QualifiedBatch(StageResult):
    """A StageResult (one state write per lead per batch) and the transitions decided."""

    transitions: list[Transition] = field(default_factory=list)


class Qualifier:
    def __init__(
        self,
        rules: Rules,
        topics: Topics,
        router_version: str,
        is_named_account: Callable[[str], bool],
    ) -> None:
        self.rules = rules
        self.topics = topics
        self.router_version = router_version
        self.is_named_account = is_named_account
        self.decay_index = DecayIndex()
        # a record forwarded to its lead's partition (service/partitioning.py) is read as one
        # of its source topic; its dead letter names where it was read (the repartition topic)
        self.source_topic = {rep: src for src, rep in topics.repartitioned.items()}

    def process(
        self,
        records: Sequence[Record],
        now: datetime,
        load_state: Callable[[bytes], bytes | None],
    ) -> QualifiedBatch:
        result = QualifiedBatch()
        ctx = Context(
            rules=self.rules,
            router_version=self.router_version,
            emitted_at=now,
            is_named_account=self.is_named_account,
        )
        states: dict[bytes, tuple[int, LeadState]] = {}
        dirty: set[bytes] = set()
        counts: Counter[str] = Counter()  # metrics once per batch: labels() costs per call
        for record in records:
            try:
                transitions = self._apply(record, now, ctx, states, load_state, counts)
            except Refused as refused:
                result.outputs.append(self._dead_letter(record, refused, now))
                continue
            except Exception as exc:  # a bug must not stop the partition or lose the record
                log.exception("internal error on a record; sent to the dead-letter topic",
                              extra={"topic": record.topic, "partition": record.partition,
                                     "offset": record.offset})
                internal = Refused("internal_error", f"internal error: {type(exc).__name__}: {exc}")
                result.outputs.append(self._dead_letter(record, internal, now))
                continue
            key = record.key
            assert key is not None  # decode() refuses keyless records
            dirty.add(key)
            for t in transitions:
                TRANSITIONS.labels(t.to_stage.value, t.path.value if t.path else "none").inc()
                result.transitions.append(t)
                result.outputs.append(Output(self.topics.transitions, key, encode(t)))
                if t.type == "lead.sql":
                    request = route_request(states[key][1], now)
                    value = orjson.dumps({"kind": "route", **request.to_json()})
                    result.outputs.append(Output(self.topics.routing, key, value))
        for kind, n in counts.items():
            if kind:
                TOUCHPOINTS.labels(kind).inc(n)
            else:
                PROFILES.inc(n)
        for key in dirty:
            partition, state = states[key]
            result.writes.append((key, state.to_bytes()))
            self.decay_index.set(key, partition, decay_deadline(state, self.rules), state.cycle)
        return result

    def index_partition(self, partition: int, states: Iterable[tuple[bytes, bytes]]) -> int:
        """Fill the decay index from a partition's stored states (on gaining the partition);
        returns how many of them can decay."""
        found = 0
        for key, raw in states:
            try:
                state = LeadState.from_bytes(raw)
            except ValueError:
                continue  # unreadable state: process() reports it when the lead is next seen
            deadline = decay_deadline(state, self.rules)
            if deadline is not None:
                found += 1
                self.decay_index.seed(key, partition, deadline, state.cycle)
        return found

    def decay_records(self, now: datetime, partitions: Collection[int], limit: int = 5000,
                      retry_after: float = 30.0) -> list[Output]:
        """Decay records for the MQLs of `partitions` whose deadline has passed at `now`.

        The worker publishes them to the recycle topic, on the lead's own partition, and
        `process` applies them in order with the lead's other inputs, through the usual
        commit path (outputs acked, then state written). Deciding here and writing state from
        a timer instead would race the batch in flight, which may hold an older copy of the
        same state and write it back after us. The record carries `as_of` (the clock when we
        looked), so applying it again after a crash decides the same (router.domain.decay).
        """
        as_of = now.isoformat()
        return [
            Output(self.topics.recycle, key,
                   orjson.dumps({"kind": "decay", "lead_id": key.decode("utf-8", "replace"),
                                 "cycle": cycle, "as_of": as_of}),
                   partition=partition)
            for key, partition, cycle in self.decay_index.take_due(
                now.timestamp(), partitions, limit, retry_after)
        ]

    def _apply(
        self,
        record: Record,
        now: datetime,
        ctx: Context,
        states: dict[bytes, tuple[int, LeadState]],
        load_state: Callable[[bytes], bytes | None],
        touchpoint_counts: Counter[str],
    ) -> list[Transition]:
        event: Touchpoint | LeadProfile | dict[str, Any]
        topic = self.source_topic.get(record.topic, record.topic)
        if topic == self.topics.touchpoints:
            event = decode_touchpoint(record.key, record.value, self.rules, now)
        elif topic == self.topics.profiles:
            event = decode_profile(record.key, record.value, self.rules, now)
        else:  # our own records: {"kind": "recycle" (routing stage) or "decay" (clock), ...}
            event = orjson.loads(record.value or b"null")
            if not isinstance(event, dict) or event.get("kind") not in ("recycle", "decay"):
                raise ValueError(f"unexpected record on {record.topic}")
        key = record.key
        if key is None:
            raise Refused("missing_key", "message has no key (the key must be the lead_id)")
        held = states.get(key)
        if held is None:
            raw = load_state(key)
            state = LeadState.from_bytes(raw) if raw is not None else LeadState(key.decode())
            states[key] = (record.partition, state)
        else:
            state = held[1]
        if isinstance(event, Touchpoint):
            touchpoint_counts[str(event.type)] += 1  # str(): the StrEnum's value, cheaper
            return apply_touchpoint(state, event, ctx)
        if isinstance(event, LeadProfile):
            touchpoint_counts[""] += 1  # "" = a profile
            return apply_profile(state, event, ctx)
        if event["kind"] == "decay":
            decayed = apply_decay(state, int(event["cycle"]),
                                  datetime.fromisoformat(event["as_of"]), ctx)
            if decayed:
                RECYCLED.labels(DECAYED).inc()
            return decayed
        return apply_recycle(
            state,
            cycle=int(event["cycle"]),
            reason=str(event["reason"]),
            trigger=str(event["trigger"]),
            occurred_at=datetime.fromisoformat(event["occurred_at"]),
            ctx=ctx,
        )

    def _dead_letter(self, record: Record, refused: Refused, now: datetime) -> Output:
        DEAD_LETTERS.labels(record.topic, refused.reason).inc()
        letter = dead_letter(
            refused,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            received_at=now,
            router_version=self.router_version,
        )
        return Output(self.topics.deadletter, dead_letter_key(record.key), encode(letter))
