"""Lead qualification (SPEC §3) as pure functions over plain data: no Kafka, no clock.

Per-lead state is bounded and order-independent by construction. Each piece of it is a
"keep the best" summary of the set of distinct touchpoints seen so far:

- `recent`: the K most recent touchpoints inside the trailing window (K = what the engagement
  threshold and the handover timeline need), ordered by (occurred_at, event_id);
- `last_intent` / `last_tts`: the most recent intent and talk-to-sales touchpoint;
- `pricing`: the P most recent pricing views, where P is the smallest number that still decides
  "n pricing views within any w days of the window" (pigeonhole: (n-1) * ceil(W/w) + 1).

Each summary is a max or a top-K over a set, so inserting the same event twice changes nothing and
the final summary does not depend on arrival order. Transitions are then decided by comparing the
criteria with the stage held: stages only move forward within a cycle, each at most once.

This module holds those decisions (MQL, SQL, recycle, and refusing events dated too far ahead).
The state and its updates are in router.domain.lead_state, the criteria in
router.domain.criteria, the score and the handover in router.domain.handover.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from router.domain.criteria import Assessment, assess
from router.domain.events import (
    LeadProfile,
    QualificationPath,
    Stage,
    Touchpoint,
    Transition,
    format_rfc3339,
)
from router.domain.handover import handover, score
from router.domain.lead_state import LeadState, record_profile, record_touchpoint
from router.domain.rules import Rules


@dataclass(frozen=True, slots=True)
class Context:
    """What a decision needs from outside the lead: rules, named accounts and the time."""

    rules: Rules
    router_version: str
    emitted_at: datetime
    is_named_account: Callable[[str], bool] = lambda _domain: False


# --------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------


def transition_id(lead_id: str, cycle: int, stage: Stage) -> str:
    return f"{lead_id}:c{cycle}:{stage.value}"


def _transition(
    state: LeadState,
    to: Stage,
    path: QualificationPath,
    a: Assessment,
    trigger: str,
    occurred_at: datetime,
    ctx: Context,
) -> Transition:
    return Transition(
        event_id=transition_id(state.lead_id, state.cycle, to),
        type="lead.sql" if to is Stage.SQL else "lead.mql",
        lead_id=state.lead_id,
        cycle=state.cycle,
        from_stage=state.stage,
        to_stage=to,
        path=path,
        triggered_by=trigger,
        occurred_at=occurred_at,
        criteria=a.detail,
        score=score(a, ctx.rules),
        handover=handover(state, a, ctx.rules) if to is Stage.SQL else None,
        router_version=ctx.router_version,
        rules_version=ctx.rules.version,
        emitted_at=ctx.emitted_at,
    )


def can_move(state: LeadState) -> bool:
    """Whether any stage can be reached from here. Every MQL and SQL path needs an intent
    touchpoint in the window (SPEC §3), and talk-to-sales and pricing views are intent types:
    without one nothing can move, so the assessment (most of an event's cost) is skipped.
    _prune drops last_intent with the window, never later than the touches it outranks."""
    return state.stage is not Stage.SQL and state.last_intent is not None


def decide(state: LeadState, trigger: str, occurred_at: datetime, ctx: Context) -> list[Transition]:
    """Move the lead forward as far as its criteria allow; mutates `state.stage`.

    Standard and ABM SQLs reached straight from `new` emit `lead.mql` first when the MQL
    criteria hold too, so funnel counts add up; the direct path never emits an MQL (SPEC §3).
    """
    if not can_move(state):
        return []
    a = assess(state, ctx.rules, ctx.is_named_account)
    sql_path: QualificationPath | None = None
    if a.sql_abm:
        sql_path = QualificationPath.ABM
    elif a.sql_standard:
        sql_path = QualificationPath.STANDARD
    elif a.sql_direct:
        sql_path = QualificationPath.DIRECT
    out: list[Transition] = []
    mql_path = QualificationPath.ABM if a.abm else QualificationPath.STANDARD
    if (
        state.stage is Stage.NEW
        and a.mql
        and sql_path is not QualificationPath.DIRECT
    ):
        out.append(_transition(state, Stage.MQL, mql_path, a, trigger, occurred_at, ctx))
        state.stage = Stage.MQL
        state.mql_at = occurred_at.timestamp()
    if sql_path is not None:
        out.append(_transition(state, Stage.SQL, sql_path, a, trigger, occurred_at, ctx))
        state.stage = Stage.SQL
    if out:
        state.last_trigger = trigger
    return out


def apply_touchpoint(state: LeadState, tp: Touchpoint, ctx: Context) -> list[Transition]:
    if not record_touchpoint(state, tp, ctx.rules, ctx.is_named_account):
        return []
    return decide(state, tp.event_id, tp.occurred_at, ctx)


def profile_trigger(profile: LeadProfile) -> str:
    return f"profile@{format_rfc3339(profile.updated_at)}"


def apply_profile(state: LeadState, profile: LeadProfile, ctx: Context) -> list[Transition]:
    """A profile arriving after touchpoints re-evaluates the lead at once (SPEC §3)."""
    if not record_profile(state, profile) or not can_move(state):
        return []  # (checked here too: the trigger's text costs more than the check)
    return decide(state, profile_trigger(profile), profile.updated_at, ctx)


def recycled_id(lead_id: str, cycle: int) -> str:
    return f"{lead_id}:c{cycle}:recycled"


def apply_recycle(
    state: LeadState,
    cycle: int,
    reason: str,
    trigger: str,
    occurred_at: datetime,
    ctx: Context,
    detail: Mapping[str, Any] | None = None,
) -> list[Transition]:
    """Sales rejected or released the lead, or it decayed: back to nurture, and a fresh cycle
    (SPEC §2.2). `detail` adds to the event's criteria (e.g. what a decay was counted from).

    The new cycle starts empty: touchpoints before `occurred_at`, and every touchpoint already
    seen (a redelivery after a crash must not count again in the new cycle), stay with the old
    cycle, so the lead qualifies again only on new engagement. The profile and account are kept.
    A repeat (the same cycle recycled twice) changes nothing.
    """
    if state.cycle != cycle or state.stage is Stage.NEW:
        return []
    a = assess(state, ctx.rules, ctx.is_named_account)
    event = Transition(
        event_id=recycled_id(state.lead_id, cycle),
        type="lead.recycled",
        lead_id=state.lead_id,
        cycle=cycle,
        from_stage=state.stage,
        to_stage=Stage.NEW,
        path=None,
        triggered_by=trigger,
        occurred_at=occurred_at,
        criteria={"recycled_because": reason, **(detail or {})},
        score=score(a, ctx.rules),
        handover=None,
        router_version=ctx.router_version,
        rules_version=ctx.rules.version,
        emitted_at=ctx.emitted_at,
    )
    state.cycle = cycle + 1
    state.stage = Stage.NEW
    state.cycle_start = occurred_at.timestamp()
    if state.newest_ts is not None:  # the touchpoints forgotten below must not come back
        state.cycle_start = max(state.cycle_start, math.nextafter(state.newest_ts, math.inf))
    state.recent = []
    state.pricing = []
    state.last_intent = None
    state.last_tts = None
    state.last_trigger = trigger
    state.mql_at = None
    return [event]


def event_time_problem(occurred_at: datetime, now: datetime, rules: Rules) -> str | None:
    """Refuse events dated too far in the future: they would hold a window open for ever."""
    ahead = (occurred_at - now).total_seconds()
    if ahead > rules.input.max_future_seconds:
        return (
            f"dated {ahead:.0f} s in the future"
            f" (more than {rules.input.max_future_seconds} s ahead of the router's clock)"
        )
    return None
