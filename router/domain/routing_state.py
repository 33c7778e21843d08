"""The routing state (SPEC §4) and its storage: who holds each lead, the round-robin cursors,
the queues, and the records they are stored as; with the request routing takes and the
outcome it gives.

Apart from the deciding (router.domain.routing) because this is the part with a storage format,
and the part the SLA clocks (router.domain.sla) and the views read as well. One decider per
routing partition owns it (see router.domain.routing), so nothing here is shared. Pure: no
Kafka, no clock.

State:
- `holdings`: lead_id -> who holds the lead in its current cycle (rep, pool, SLA clock, open?).
  Open leads per rep are derived from it (an index rebuilt on load, never stored twice).
- `cursors`: "pool|language group" -> (last rep chosen, consecutive turns it has had).
- `queues`: pool -> leads waiting, in arrival order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.domain.events import SlaClass


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What routing needs to know about one SQL (built by the qualifier from its state)."""

    lead_id: str
    cycle: int
    sla_class: SlaClass
    country: str | None = None
    language: str | None = None
    employees: int | None = None
    account_domains: tuple[str, ...] = ()
    sql_event_id: str = ""
    received_at: float = 0.0  # wall time the triggering input was processed (latency metric)

    def to_json(self) -> dict[str, Any]:
        return {
            "lead_id": self.lead_id,
            "cycle": self.cycle,
            "sla_class": self.sla_class.value,
            "country": self.country,
            "language": self.language,
            "employees": self.employees,
            "account_domains": list(self.account_domains),
            "sql_event_id": self.sql_event_id,
            "received_at": self.received_at,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RouteRequest:
        return cls(
            lead_id=raw["lead_id"],
            cycle=raw["cycle"],
            sla_class=SlaClass(raw["sla_class"]),
            country=raw.get("country"),
            language=raw.get("language"),
            employees=raw.get("employees"),
            account_domains=tuple(raw.get("account_domains") or ()),
            sql_event_id=raw.get("sql_event_id", ""),
            received_at=raw.get("received_at", 0.0),
        )


@dataclass(slots=True)
class Holding:
    lead_id: str
    cycle: int
    rep_id: str
    pool: str
    rule: str
    seq: int  # assignments of this lead in this cycle (1 = first; reassignments count up)
    sla_class: SlaClass
    started_at: float
    due_at: float
    open: bool = True
    first_touch_at: float | None = None
    request: RouteRequest | None = None
    ended_by: str | None = None  # the activity that ended this cycle's holding (rejected, ...)
    warn_at: float = 0.0  # when the SLA warning is due (warning_fraction of the budget)
    warned: bool = False
    breached: bool = False
    breached_by: tuple[str, ...] = ()  # reps that let this lead's clock run out this cycle

    @property
    def clock_running(self) -> bool:
        """The SLA clock runs from assignment until first touch, a breach, or the end."""
        return self.first_touch_at is None and self.ended_by is None and not self.breached


@dataclass(slots=True)
class Queued:
    request: RouteRequest
    pool: str
    queued_at: float
    due_at: float
    warn_at: float = 0.0
    warned: bool = False
    breached: bool = False


@dataclass(slots=True)
class Decision:
    """One routing outcome; the adapter turns it into an Assignment event."""

    type: str  # lead.assigned | lead.queued | lead.reassigned
    lead_id: str
    cycle: int
    seq: int
    rep_id: str | None
    pool: str
    rule: str | None
    trace: list[dict[str, str]]
    sla_class: SlaClass
    started_at: float
    due_at: float
    received_at: float = 0.0

    @property
    def event_id(self) -> str:
        if self.type == "lead.queued":
            return f"{self.lead_id}:c{self.cycle}:queued"
        return f"{self.lead_id}:c{self.cycle}:assign:{self.seq}"


@dataclass
class RoutingState:
    holdings: dict[str, Holding] = field(default_factory=dict)
    cursors: dict[str, tuple[str, int]] = field(default_factory=dict)
    queues: dict[str, list[Queued]] = field(default_factory=dict)
    open_by_rep: dict[str, set[str]] = field(default_factory=dict)  # derived from holdings
    timed: set[str] = field(default_factory=set)  # derived: leads whose SLA clock runs
    dirty: set[str] = field(default_factory=set)  # storage keys changed since the last flush

    # ---- derived index -------------------------------------------------------------------

    def open_count(self, rep_id: str) -> int:
        return len(self.open_by_rep.get(rep_id, ()))

    def _index(self, h: Holding) -> None:
        if h.open:
            self.open_by_rep.setdefault(h.rep_id, set()).add(h.lead_id)
        if h.clock_running:
            self.timed.add(h.lead_id)

    def touched(self, h: Holding) -> None:
        """Record a change to `h` (SLA flags, first touch): storage and the clock index."""
        if h.clock_running:
            self.timed.add(h.lead_id)
        else:
            self.timed.discard(h.lead_id)
        self.dirty.add(f"lead:{h.lead_id}")

    def _unindex(self, h: Holding) -> None:
        self.timed.discard(h.lead_id)
        leads = self.open_by_rep.get(h.rep_id)
        if leads is not None:
            leads.discard(h.lead_id)
            if not leads:
                del self.open_by_rep[h.rep_id]

    def hold(self, h: Holding) -> None:
        old = self.holdings.get(h.lead_id)
        if old is not None:
            self._unindex(old)
        self.holdings[h.lead_id] = h
        self._index(h)
        self.dirty.add(f"lead:{h.lead_id}")

    def close(self, lead_id: str, ended_by: str | None = None) -> Holding | None:
        """Free the rep's slot; `ended_by` also ends the holding (kept, so a repeated request
        for the same cycle is recognised and later activity on it is refused)."""
        h = self.holdings.get(lead_id)
        if h is None:
            return None
        self._unindex(h)
        h.open = False
        if ended_by is not None:
            h.ended_by = ended_by
        self.touched(h)
        return h

    def is_queued(self, lead_id: str, cycle: int) -> bool:
        for queue in self.queues.values():  # loops, not any(): every SQL walks every queue
            for q in queue:
                request = q.request
                if request.lead_id == lead_id and request.cycle >= cycle:
                    return True
        return False

    # ---- storage: one record per lead, per cursor and per pool queue ------------------------

    def flush(self) -> dict[str, bytes | None]:
        """Changed records since the last flush (None = delete), keyed by storage key."""
        out: dict[str, bytes | None] = {}
        for key in sorted(self.dirty):
            kind, _, name = key.partition(":")
            if kind == "lead":
                h = self.holdings.get(name)
                out[key] = None if h is None else orjson.dumps(_holding_json(h))
            elif kind == "cursor":
                cursor = self.cursors.get(name)
                out[key] = None if cursor is None else orjson.dumps(list(cursor))
            elif kind == "queue":
                queue = self.queues.get(name)
                out[key] = None if not queue else orjson.dumps([_queued_json(q) for q in queue])
        self.dirty.clear()
        return out

    @classmethod
    def load(cls, records: Mapping[str, bytes]) -> RoutingState:
        state = cls()
        for key, value in records.items():
            kind, _, name = key.partition(":")
            raw = orjson.loads(value)
            if kind == "lead":
                state.hold(_holding_from(raw))
            elif kind == "cursor":
                state.cursors[name] = (raw[0], raw[1])
            elif kind == "queue":
                state.queues[name] = [_queued_from(q) for q in raw]
        state.dirty.clear()
        return state


def _holding_json(h: Holding) -> dict[str, Any]:
    return {
        "lead_id": h.lead_id, "cycle": h.cycle, "rep_id": h.rep_id, "pool": h.pool,
        "rule": h.rule, "seq": h.seq, "sla_class": h.sla_class.value,
        "started_at": h.started_at, "due_at": h.due_at, "open": h.open,
        "first_touch_at": h.first_touch_at,
        "request": h.request.to_json() if h.request else None,
        "ended_by": h.ended_by,
        "warn_at": h.warn_at, "warned": h.warned, "breached": h.breached,
        "breached_by": list(h.breached_by),
    }


def _holding_from(raw: Mapping[str, Any]) -> Holding:
    return Holding(
        lead_id=raw["lead_id"], cycle=raw["cycle"], rep_id=raw["rep_id"], pool=raw["pool"],
        rule=raw["rule"], seq=raw["seq"], sla_class=SlaClass(raw["sla_class"]),
        started_at=raw["started_at"], due_at=raw["due_at"], open=raw["open"],
        first_touch_at=raw.get("first_touch_at"),
        request=RouteRequest.from_json(raw["request"]) if raw.get("request") else None,
        ended_by=raw.get("ended_by"),
        warn_at=raw.get("warn_at", 0.0), warned=raw.get("warned", False),
        breached=raw.get("breached", False), breached_by=tuple(raw.get("breached_by", ())),
    )


def _queued_json(q: Queued) -> dict[str, Any]:
    return {"request": q.request.to_json(), "pool": q.pool, "queued_at": q.queued_at,
            "due_at": q.due_at, "warn_at": q.warn_at, "warned": q.warned,
            "breached": q.breached}


def _queued_from(raw: Mapping[str, Any]) -> Queued:
    return Queued(RouteRequest.from_json(raw["request"]), raw["pool"], raw["queued_at"],
                  raw["due_at"], raw.get("warn_at", 0.0), raw.get("warned", False),
                  raw.get("breached", False))

