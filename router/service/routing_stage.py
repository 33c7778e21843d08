"""The routing handler: every routing input in one ordered stream, decisions out.

Inputs on the internal routing topic (one partition, so one decider at a time):
  {"kind": "route", ...RouteRequest}       from the qualifier, when a lead becomes SQL
  {"kind": "activity", "activity": {...}, "source": {...}}   sales activity, already validated
  {"kind": "tick", "at": epoch}            the leader's clock, so time-based changes (a rep back
                                           from out-of-office) drain queues in the same order
Outputs: Assignment events, dead letters for activity from a rep who does not hold the lead,
and the changed routing-state records. No Kafka here; the partition processor
(router/worker/pipeline) moves the bytes.

Replays: the state carries the offset of the last routing record applied, written with the
state itself. Records at or below it are skipped, so a replay after a crash never applies an
activity twice (the adapter publishes outputs before it writes state, so skipped records'
outputs are already on the broker).

Direct delivery (exactly-once, the worker owning the routing partition): the qualifier's
records are applied here as it decides them, in the transaction that publishes them
(`process(..., direct=True)`, processor.py `_direct`), and their published copy carries
"applied_in_transaction": true (`applied_copy`). Reading such a copy back applies nothing: it
exists only if the transaction that applied it committed. Records handed over directly have
no offset, so they never move the applied offset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from router.adapters.topics import Topics
from router.adapters.wire import (
    Refused,
    dead_letter,
    dead_letter_key,
    encode,
)
from router.domain.events import (
    Assignment,
    NamedAccount,
    Rep,
    SalesActivity,
    SalesActivityType,
    SlaEvent,
    TraceEntry,
)
from router.domain.routing import apply_activity, drain_queues, holder_problem, route
from router.domain.routing_state import Decision, RouteRequest, RoutingState
from router.domain.rules import Rules
from router.domain.sla import SlaOutcome, check_clocks, first_touch
from router.metrics import (
    ASSIGNMENTS,
    DEAD_LETTERS,
    OPEN_LEADS,
    QUEUED_LEADS,
    RECYCLED,
    REJECTIONS,
    RESPONSE_SECONDS,
    ROUTING_LATENCY,
    SLA_OUTCOMES,
)
from router.records import Output, Record, StageResult

log = logging.getLogger(__name__)

OFFSET_KEY = "meta:offset"
APPLIED = "applied_in_transaction"
# SPEC §2.2 and the SLA issue: a rejection or a release sends the lead back to nurture
RECYCLING_ACTIVITY = frozenset({SalesActivityType.REJECTED, SalesActivityType.RELEASED})


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass(slots=True)
class RoutedBatch(StageResult):
    """A StageResult (the changed routing records, then the applied offset) and the routing
    decisions behind its assignment outputs."""

    decisions: list[Decision] = field(default_factory=list)


def tick(now: datetime) -> bytes:
    return orjson.dumps({"kind": "tick", "at": now.timestamp()})


def applied_copy(value: bytes) -> bytes:
    """A routing record as published once it was applied in the publishing transaction."""
    raw = orjson.loads(value)
    raw[APPLIED] = True
    return orjson.dumps(raw)


class RoutingStage:
    def __init__(
        self,
        rules: Rules,
        topics: Topics,
        router_version: str,
        roster: Mapping[str, Rep],
        accounts: Mapping[str, NamedAccount],
    ) -> None:
        self.rules = rules
        self.topics = topics
        self.router_version = router_version
        self.roster = roster
        self.accounts = accounts
        self.state: RoutingState | None = None
        self.applied_offset = -1

    def on_roster_change(self, rep_id: str, rep: Rep | None) -> None:
        """Say so when a rep who still holds open leads leaves the roster or goes inactive:
        its leads stay assigned (nothing is moved silently) until the rep dispositions or
        releases them; see the README's "Roster changes"."""
        if self.state is None or (rep is not None and rep.active):
            return
        open_leads = self.state.open_count(rep_id)
        if open_leads:
            log.warning(
                "rep left the roster or went inactive while holding open leads",
                extra={"rep_id": rep_id, "open_leads": open_leads,
                       "change": "removed" if rep is None else "inactive"},
            )

    def load(self, records: Mapping[bytes, bytes]) -> None:
        """Build the in-memory state from the recovered table (once per assignment)."""
        decoded = {k.decode(): v for k, v in records.items() if v is not None}
        offset = decoded.pop(OFFSET_KEY, None)
        self.applied_offset = int(orjson.loads(offset)) if offset is not None else -1
        self.state = RoutingState.load(decoded)
        self._gauges()

    def process(self, records: Sequence[Record], now: datetime,
                load_state: Callable[[], Mapping[bytes, bytes]], *,
                direct: bool = False) -> RoutedBatch:
        """The records in order. `direct`: handed over by the worker in the transaction that
        publishes them (no offsets; see the module docstring), not read from the topic."""
        if self.state is None:
            self.load(load_state())
        state = self.state
        assert state is not None
        result = RoutedBatch()
        last_offset = self.applied_offset
        for record in records:
            if not direct:
                if record.offset <= self.applied_offset:
                    continue  # already applied before a crash; its outputs are on the broker
                last_offset = max(last_offset, record.offset)
            freed = False
            try:
                raw: Any = orjson.loads(record.value or b"null")
                kind = raw.get("kind") if isinstance(raw, dict) else None
                if not direct and kind is not None and raw.get(APPLIED) is True:
                    continue  # applied in the transaction that published it
                if kind == "route":
                    result.decisions += route(RouteRequest.from_json(raw), self.roster,
                                              self.accounts, state, self.rules, now)
                elif kind == "activity":
                    freed = self._activity(record, raw, now, result)
                elif kind == "tick":
                    outcomes, decisions = check_clocks(state, self.roster, self.accounts,
                                                       self.rules, now)
                    result.outputs += [self._sla_event(o, now) for o in outcomes]
                    result.decisions += decisions
                    freed = True  # time moved: someone may be back from out of office
                else:
                    raise ValueError(f"unknown routing record kind {kind!r}")
            except Exception as exc:  # never stop the routing stream on one record
                log.exception("routing record failed; sent to the dead-letter topic",
                              extra={"offset": record.offset})
                refused = Refused("internal_error", f"internal error: {type(exc).__name__}: {exc}")
                result.outputs.append(self._dead_letter(record, refused, now, None))
            if freed:
                # drain before the next record: a queued lead takes a freed slot ahead of an SQL
                # that arrives after it (arrival order), however the records are batched
                result.decisions += drain_queues(self.roster, self.accounts, state, self.rules,
                                                 now)
        for decision in result.decisions:
            result.outputs.append(self._assignment(decision, now))
        for key, value in state.flush().items():
            result.writes.append((key.encode(), value))
        if last_offset > self.applied_offset:
            self.applied_offset = last_offset
            result.writes.append((OFFSET_KEY.encode(), orjson.dumps(last_offset)))
        if not direct:  # once per lead batch would be per SQL; its read-back copy updates them
            self._gauges()
        return result

    def _activity(self, record: Record, raw: dict[str, Any], now: datetime,
                  result: RoutedBatch) -> bool:
        state = self.state
        assert state is not None
        activity = SalesActivity.model_validate(raw["activity"])
        problem = holder_problem(state, activity.lead_id, activity.rep_id)
        if problem is not None:
            result.outputs.append(
                self._dead_letter(record, Refused("not_holder", problem), now, raw["source"]))
            return False
        if activity.type is SalesActivityType.FIRST_TOUCH:
            outcome = first_touch(state, state.holdings[activity.lead_id], activity.occurred_at)
            if outcome is not None:
                result.outputs.append(self._sla_event(outcome, now))
            return False
        holding = state.holdings[activity.lead_id]
        freed = apply_activity(state, activity.lead_id, activity.rep_id, activity.type,
                               activity.occurred_at)
        if activity.type in RECYCLING_ACTIVITY:
            # back to nurture: the qualifier (which owns stage and cycle) emits lead.recycled
            because = activity.type.value
            if activity.reason is not None:
                REJECTIONS.labels(activity.reason.value).inc()
                because += f": {activity.reason.value}"
            RECYCLED.labels(activity.type.value).inc()
            recycle = {"kind": "recycle", "lead_id": activity.lead_id, "cycle": holding.cycle,
                       "reason": because, "trigger": activity.event_id,
                       "occurred_at": activity.occurred_at.isoformat()}
            result.outputs.append(
                Output(self.topics.recycle, activity.lead_id.encode(), orjson.dumps(recycle)))
        return freed is not None

    def _sla_event(self, o: SlaOutcome, now: datetime) -> Output:
        SLA_OUTCOMES.labels(o.type, o.sla_class.value, o.pool).inc()
        if o.response_seconds is not None:
            RESPONSE_SECONDS.labels(o.sla_class.value).observe(o.response_seconds)
        event = SlaEvent(
            event_id=o.event_id,
            type=o.type,  # type: ignore[arg-type]
            lead_id=o.lead_id,
            cycle=o.cycle,
            rep_id=o.rep_id,
            pool=o.pool,
            sla_class=o.sla_class,
            started_at=_at(o.started_at),
            due_at=_at(o.due_at),
            occurred_at=_at(o.occurred_at),
            response_seconds=o.response_seconds,
            detail=o.detail,
            reassigned_to=o.reassigned_to,
            router_version=self.router_version,
            rules_version=self.rules.version,
            emitted_at=now,
        )
        return Output(self.topics.sla, o.lead_id.encode(), encode(event))

    def _dead_letter(self, record: Record, refused: Refused, now: datetime,
                     source: Mapping[str, Any] | None) -> Output:
        topic = source["topic"] if source else record.topic
        DEAD_LETTERS.labels(topic, refused.reason).inc()
        value = source["value"].encode() if source and source.get("value") else record.value
        letter = dead_letter(
            refused,
            topic=topic,
            partition=source["partition"] if source else record.partition,
            offset=source["offset"] if source else record.offset,
            key=record.key,
            value=value,
            received_at=now,
            router_version=self.router_version,
        )
        return Output(self.topics.deadletter, dead_letter_key(record.key), encode(letter))

    def _assignment(self, d: Decision, now: datetime) -> Output:
        ASSIGNMENTS.labels(d.pool, d.rule or "queued", d.type).inc()
        if d.type != "lead.queued" and d.received_at:
            ROUTING_LATENCY.observe(max(0.0, now.timestamp() - d.received_at))
        event = Assignment.model_validate(
            {
                "event_id": d.event_id,
                "type": d.type,
                "lead_id": d.lead_id,
                "cycle": d.cycle,
                "rep_id": d.rep_id,
                "pool": d.pool,
                "rule": d.rule,
                "trace": [TraceEntry(**entry) for entry in d.trace],
                "sla": {"class": d.sla_class, "due_at": _at(d.due_at)},
                "router_version": self.router_version,
                "rules_version": self.rules.version,
                "emitted_at": now,
            }
        )
        return Output(self.topics.assignments, d.lead_id.encode(), encode(event))

    def forget(self) -> None:
        """The routing partition moved away: drop the state (reloaded from the recovered table
        if it comes back) and stop reporting per-rep and per-pool gauges from here, or two
        workers would both report them."""
        self.state = None
        OPEN_LEADS.clear()
        QUEUED_LEADS.clear()

    def _gauges(self) -> None:
        state = self.state
        if state is None:
            return
        OPEN_LEADS.clear()
        for rep_id in self.roster:
            OPEN_LEADS.labels(rep_id).set(state.open_count(rep_id))
        QUEUED_LEADS.clear()
        for pool, queue in state.queues.items():
            QUEUED_LEADS.labels(pool).set(len(queue))
