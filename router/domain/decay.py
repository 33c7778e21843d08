"""MQL decay (SPEC §2.2) as pure functions: the time is always passed in, never read here.

An MQL that sees no engagement for a whole window (rules `decay`, default the 30-day
engagement window) without reaching SQL emits `lead.recycled` with reason `decayed` and
returns to nurture in the next cycle.

Event time or wall clock? Both, each where it is the only sound choice:
- the *deadline* is event time: the lead's newest touchpoint (or its MQL, if that came later,
  e.g. a profile that arrived long after the touches) plus the window. That is the moment its
  event-time engagement window runs empty, the same clock the qualification windows use, and
  a replay of the same inputs computes the same deadline;
- *firing* needs the wall clock: a lead that has gone quiet sends no event, so no event time
  would ever pass its deadline (a partition watermark would stall on a quiet partition too).
  The worker compares deadlines with its clock and writes the time it looked (`as_of`) into
  the decay record it sends itself, so applying that record is deterministic: the same record
  decides the same way after a crash, and the event's fields come from the state alone.
Consequence: history replayed through a live worker decays at once the MQLs whose newest
engagement is older than the window, as they would have decayed by now had it run live. Event
times run at most `input.max_future_seconds` ahead of the clock, so nothing decays late by more.
"""

from __future__ import annotations

from datetime import UTC, datetime

from router.domain.events import Stage, Transition, format_rfc3339
from router.domain.lead_state import LeadState
from router.domain.qualification import Context, apply_recycle
from router.domain.rules import Rules

DECAYED = "decayed"


def decay_deadline(state: LeadState, rules: Rules) -> float | None:
    """Epoch seconds at which this lead decays if nothing happens; None if it cannot decay
    (not an MQL, or decay switched off)."""
    window = rules.decay_seconds
    if window is None or state.stage is not Stage.MQL:
        return None
    times = [t for t in (state.newest_ts, state.mql_at) if t is not None]
    return max(times) + window if times else None


def decay_due(state: LeadState, as_of: datetime, rules: Rules) -> bool:
    deadline = decay_deadline(state, rules)
    return deadline is not None and deadline <= as_of.timestamp()


def decay_trigger(deadline: float) -> str:
    return f"decay@{format_rfc3339(datetime.fromtimestamp(deadline, UTC))}"


def apply_decay(state: LeadState, cycle: int, as_of: datetime, ctx: Context) -> list[Transition]:
    """Recycle the lead if, at `as_of`, cycle `cycle` is still an MQL past its deadline.

    Anything else (a touchpoint moved the deadline, it reached SQL, it was recycled already,
    the record is a repeat) changes nothing, which is what makes a repeated or late decay
    record harmless. The event is dated at the deadline, not at `as_of`, so its content
    depends on the state only; its id is the cycle's `recycled` id (one recycle per cycle).
    """
    if state.cycle != cycle or not decay_due(state, as_of, ctx.rules):
        return []
    deadline = decay_deadline(state, ctx.rules)
    assert deadline is not None  # decay_due said so
    window = ctx.rules.decay_seconds
    assert window is not None
    last = state.newest_ts
    detail = {
        "decay": {
            "last_engagement_at": (format_rfc3339(datetime.fromtimestamp(last, UTC))
                                   if last is not None else None),
            "mql_at": (format_rfc3339(datetime.fromtimestamp(state.mql_at, UTC))
                       if state.mql_at is not None else None),
            "window_days": round(window / 86400.0, 6),
        }
    }
    return apply_recycle(state, cycle, DECAYED, decay_trigger(deadline),
                         datetime.fromtimestamp(deadline, UTC), ctx, detail=detail)
