"""Speed-to-lead SLA (SPEC §5) as pure functions over the routing state: no Kafka, no clock.

The clocks live in the routing state (router.domain.routing_state: each Holding and Queued entry
has its start, warning and deadline), which is changelog-backed and owned by one routing
partition. `check_clocks` is called by the owner of that partition for every clock tick, so a
deadline is never scanned by two workers, survives a crash with the state, and fires once: the
flags it sets (`warned`, `breached`) are stored in the same changelog write as the outputs'
effects, and the outputs carry deterministic ids (`L-1:c1:sla:1:breached`) should a replay emit
them again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from router.domain.events import NamedAccount, Rep, SlaClass
from router.domain.routing import assign_lead, decide_route, record_first_touch
from router.domain.routing_state import Decision, Holding, RoutingState
from router.domain.rules import Rules


@dataclass(slots=True)
class SlaOutcome:
    type: str  # sla.warning | sla.breached | sla.met
    lead_id: str
    cycle: int
    seq: int  # the assignment whose clock this is (0: still queued)
    rep_id: str | None
    pool: str
    sla_class: SlaClass
    started_at: float
    due_at: float
    occurred_at: float
    response_seconds: float | None = None
    detail: str | None = None
    reassigned_to: str | None = None

    @property
    def event_id(self) -> str:
        return f"{self.lead_id}:c{self.cycle}:sla:{self.seq}:{self.type.removeprefix('sla.')}"


def _outcome(kind: str, h: Holding, at: float, *, response_seconds: float | None = None,
             detail: str | None = None, reassigned_to: str | None = None) -> SlaOutcome:
    return SlaOutcome(kind, h.lead_id, h.cycle, h.seq, h.rep_id, h.pool, h.sla_class,
                      h.started_at, h.due_at, at, response_seconds, detail, reassigned_to)


def reassign_on_breach(sla_class: SlaClass, rules: Rules) -> bool:
    return bool(getattr(rules.sla.reassign_on_breach, sla_class.value))


def _breach(h: Holding, state: RoutingState, roster: Mapping[str, Rep],
            accounts: Mapping[str, NamedAccount], rules: Rules, now: datetime
            ) -> tuple[SlaOutcome, Decision | None]:
    h.breached = True
    breached_by = (*h.breached_by, h.rep_id)
    if not reassign_on_breach(h.sla_class, rules) or h.request is None:
        state.touched(h)
        return _outcome("sla.breached", h, h.due_at,
                        detail=f"no first touch by {h.rep_id}; reassignment is off for"
                               f" {h.sla_class.value}"), None
    choice, pool, trace = decide_route(h.request, roster, accounts, state, rules, now,
                                       exclude=frozenset(breached_by))
    if choice is None:
        state.touched(h)
        return _outcome("sla.breached", h, h.due_at,
                        detail=f"nobody else is eligible; the lead stays with {h.rep_id}"), None
    outcome = _outcome("sla.breached", h, h.due_at, reassigned_to=choice.rep.rep_id,
                       detail=f"no first touch by {h.rep_id}; reassigned to"
                              f" {choice.rep.rep_id}")
    trace.insert(0, {"rep_id": h.rep_id, "skipped": "sla_breached",
                     "detail": f"no first touch by the deadline (assignment {h.seq})"})
    decision = assign_lead(state, h.request, choice, pool, trace, rules, started=now,
                       seq=h.seq + 1, kind="lead.reassigned", rule="reassign_after_breach",
                       breached_by=breached_by)
    return outcome, decision


def check_clocks(
    state: RoutingState,
    roster: Mapping[str, Rep],
    accounts: Mapping[str, NamedAccount],
    rules: Rules,
    now: datetime,
) -> tuple[list[SlaOutcome], list[Decision]]:
    """Warnings and breaches that are due at `now`; breaches may reassign (SPEC §5)."""
    ts = now.timestamp()
    outcomes: list[SlaOutcome] = []
    decisions: list[Decision] = []
    for lead_id in sorted(state.timed):
        h = state.holdings[lead_id]
        if not h.warned and ts >= h.warn_at:
            h.warned = True
            state.touched(h)
            outcomes.append(_outcome("sla.warning", h, h.warn_at))
        if ts >= h.due_at:
            outcome, decision = _breach(h, state, roster, accounts, rules, now)
            outcomes.append(outcome)
            if decision is not None:
                decisions.append(decision)
    for pool in sorted(state.queues):
        for q in state.queues[pool]:
            if q.breached:
                continue
            r = q.request
            common = (r.lead_id, r.cycle, 0, None, pool, r.sla_class, q.queued_at, q.due_at)
            if not q.warned and ts >= q.warn_at:
                q.warned = True
                outcomes.append(SlaOutcome("sla.warning", *common, q.warn_at,
                                           detail=f"still queued in {pool}"))
                state.dirty.add(f"queue:{pool}")
            if ts >= q.due_at:
                q.breached = True
                outcomes.append(SlaOutcome("sla.breached", *common, q.due_at,
                                           detail=f"still queued in {pool}: nobody eligible"))
                state.dirty.add(f"queue:{pool}")
    return outcomes, decisions


def first_touch(state: RoutingState, h: Holding, touched: datetime) -> SlaOutcome | None:
    """The holder's first contact attempt stops its clock: met in time, or a late breach."""
    was_breached = h.breached
    if not record_first_touch(state, h, touched):
        return None  # only the first one counts
    if was_breached:
        return None  # the breach was already published
    touched_at = touched.timestamp()
    response = max(0.0, touched_at - h.started_at)
    if touched_at <= h.due_at:
        return _outcome("sla.met", h, touched_at, response_seconds=response)
    h.breached = True
    return _outcome("sla.breached", h, h.due_at, response_seconds=response,
                    detail=f"first touch came {touched_at - h.due_at:.0f} s late")
