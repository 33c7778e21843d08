"""The per-lead qualification state and how touchpoints and profiles fold into it.

Apart from the decisions (router.domain.qualification) because this is the part with a storage
format and the bounded, order-independent summaries that format holds; why each summary is
enough is in router.domain.qualification's docstring. Pure: no Kafka, no clock.
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.domain.events import (
    INTENT_TYPES,
    TALK_TO_SALES_TYPES,
    LeadProfile,
    Stage,
    Touchpoint,
)
from router.domain.rules import Rules

# (occurred_at epoch seconds, event_id, type, talking-point topic or None)
Touch = tuple[float, str, str, str | None]

STATE_FORMAT = 1
_TOPIC_MAX = 80
_STAGE_OF: dict[str, Stage] = {stage.value: stage for stage in Stage}  # faster than Stage(v)


@dataclass(slots=True)
class LeadState:
    """Everything the rules need to know about one lead, and nothing more."""

    lead_id: str
    cycle: int = 1
    stage: Stage = Stage.NEW
    newest_ts: float | None = None
    recent: list[Touch] = field(default_factory=list)  # newest first
    last_intent: Touch | None = None
    last_tts: Touch | None = None
    pricing: list[Touch] = field(default_factory=list)  # newest first
    profile: dict[str, Any] | None = None
    profile_ts: float | None = None
    account: tuple[float, str] | None = None  # (occurred_at, domain) of the newest touch naming one
    last_trigger: str | None = None
    cycle_start: float | None = None  # touchpoints before this belong to an earlier cycle
    mql_at: float | None = None  # event time of this cycle's MQL (router.domain.decay)

    def to_bytes(self) -> bytes:
        # copied to its own size: orjson's buffer is at least 4 KiB, and a batch's encoded
        # states wait for their commit (see MemoryStore.write in worker/pipeline/store.py)
        return bytes(memoryview(orjson.dumps(
            {
                "v": STATE_FORMAT,
                "id": self.lead_id,
                "c": self.cycle,
                "s": str(self.stage),
                "n": self.newest_ts,
                "r": self.recent,
                "i": self.last_intent,
                "t": self.last_tts,
                "p": self.pricing,
                "pf": self.profile,
                "pt": self.profile_ts,
                "a": self.account,
                "lt": self.last_trigger,
                "cs": self.cycle_start,
                "ma": self.mql_at,
            }
        )))

    @classmethod
    def from_bytes(cls, data: bytes) -> LeadState:
        raw = orjson.loads(data)
        if raw.get("v") != STATE_FORMAT:
            raise ValueError(f"unsupported lead state format {raw.get('v')!r}")
        # positional, in field order, each read in the order it always was (so a damaged
        # state fails on the same field): keyword arguments and a helper cost a tenth here
        return cls(
            raw["id"],
            raw["c"],
            _STAGE_OF.get(raw["s"]) or Stage(raw["s"]),  # Stage(): ValueError if unknown
            raw["n"],
            list(map(tuple, raw["r"])),  # 4-lists on the wire: Touch tuples here
            None if (intent := raw["i"]) is None else tuple(intent),
            None if (tts := raw["t"]) is None else tuple(tts),
            list(map(tuple, raw["p"])),
            raw["pf"],
            raw["pt"],
            None if (account := raw["a"]) is None else (account[0], account[1]),
            raw.get("lt"),
            raw.get("cs"),
            raw.get("ma"),
        )


# --------------------------------------------------------------------------------------------
# State updates
# --------------------------------------------------------------------------------------------


def recent_capacity(rules: Rules) -> int:
    return max(rules.engagement.sql_min_touchpoints, rules.handover.timeline_size)


def pricing_capacity(rules: Rules) -> int:
    buckets = math.ceil(rules.windows.engagement_days / rules.windows.pricing_pair_days)
    return (rules.intent.sql_min_pricing_views - 1) * buckets + 1


@dataclass(frozen=True, slots=True)
class _Limits:
    """What record_touchpoint reads from the rules on every touch, worked out once per rule
    set (the rules are frozen): a few nested pydantic attributes and a property each time
    were a tenth of a replayed touch's cost."""

    window_seconds: float
    recent: int
    pricing: int
    quiz_score: float


_LIMITS: dict[int, tuple[Rules, _Limits]] = {}  # id(rules) -> (the rules, their limits)


def _limits(rules: Rules) -> _Limits:
    held = _LIMITS.get(id(rules))
    if held is not None and held[0] is rules:  # `is`: an id is reused once its object is gone
        return held[1]
    limits = _Limits(rules.window_seconds, recent_capacity(rules), pricing_capacity(rules),
                     rules.intent.quiz_talk_to_sales_score)
    if len(_LIMITS) >= 64:  # a long-lived process sees a handful; tests build thousands
        _LIMITS.clear()
    _LIMITS[id(rules)] = (rules, limits)
    return limits


def touch_order(t: Touch) -> tuple[float, str]:
    return (-t[0], t[1])  # newest first, ties broken by event_id


def _insert_top(touches: list[Touch], touch: Touch, capacity: int) -> bool:
    """Insert into a newest-first top-`capacity` list; False for a repeat or a too-old touch."""
    event_id = touch[1]
    for held in touches:
        if held[1] == event_id:
            return False
    if not touches or touch[0] > touches[0][0]:
        # newer than every held touch (the common case in time order): insort would put it
        # first, and it cannot be the one that falls off
        touches.insert(0, touch)
        del touches[capacity:]
        return True
    if len(touches) >= capacity and touch_order(touch) > touch_order(touches[-1]):
        return False
    insort(touches, touch, key=touch_order)
    del touches[capacity:]
    return True


def _newer(a: Touch | None, b: Touch) -> bool:
    return a is None or (b[0], b[1]) > (a[0], a[1])


def _topic_of(tp: Touchpoint) -> str | None:
    props = tp.properties
    for key in ("topic", "title"):
        value = props.get(key)
        if isinstance(value, str):
            value = value.strip()
            if value:
                return value[:_TOPIC_MAX]
    if tp.type == "pricing_page_view":
        return "pricing"
    if tp.type == "competitor_comparison_view":
        return "competitor comparison"
    return None


def is_talk_to_sales(tp: Touchpoint, rules: Rules) -> bool:
    return _is_talk_to_sales(tp, str(tp.type), rules.intent.quiz_talk_to_sales_score)


def _is_talk_to_sales(tp: Touchpoint, kind: str, quiz_score: float) -> bool:
    if kind in TALK_TO_SALES_TYPES:
        return True
    if kind == "quiz_completed":
        score = tp.properties.get("score")
        return (
            isinstance(score, int | float)
            and not isinstance(score, bool)
            and score >= quiz_score
        )
    return False


def _prune(state: LeadState, rules: Rules) -> None:
    if state.newest_ts is None:
        return
    cut = state.newest_ts - _limits(rules).window_seconds
    # both lists are newest first (_insert_top keeps them so): when the oldest is still in
    # the window nothing goes, and most touches leave them as they are (a replay's hot path)
    if state.recent and state.recent[-1][0] < cut:
        state.recent = [t for t in state.recent if t[0] >= cut]
    if state.pricing and state.pricing[-1][0] < cut:
        state.pricing = [t for t in state.pricing if t[0] >= cut]
    if state.last_intent is not None and state.last_intent[0] < cut:
        state.last_intent = None
    if state.last_tts is not None and state.last_tts[0] < cut:
        state.last_tts = None


def _account_rank(account: tuple[float, str], is_named_account: Callable[[str], bool]
                  ) -> tuple[bool, float, str]:
    return (is_named_account(account[1]), account[0], account[1])


# The touch made from the last touchpoint recorded, and its account domain lowercased. A replay
# records each touchpoint into one state per rule set in turn: they then hold one tuple instead
# of equal copies, so the second state's scans find its touches already in the CPU cache (with
# 100k states in memory, those scans waited on memory more than they computed). Both depend on
# the touchpoint only, and a touchpoint is immutable; `is` on the held reference cannot match
# another one.
_LAST_TOUCH: tuple[Touchpoint | None, Touch, str | None] = (None, (0.0, "", "", None), None)


def record_touchpoint(
    state: LeadState,
    tp: Touchpoint,
    rules: Rules,
    is_named_account: Callable[[str], bool] = lambda _domain: False,
) -> bool:
    """Fold one touchpoint into the state; False when it changes nothing (repeat or too old).

    The lead's account is the newest named-account domain its touchpoints carried, else the
    newest domain: a later touch from another domain must not take the ABM path away again,
    or the stage reached would depend on the order the touches arrived in.
    """
    global _LAST_TOUCH
    last = _LAST_TOUCH  # read once: (touchpoint, its touch, its domain), replaced whole below
    if last[0] is tp:  # the same touchpoint for another rule set (a replay's lock-step)
        touch, domain = last[1], last[2]
        ts, kind = touch[0], touch[2]
    else:
        touch, domain = None, None
        ts = tp.occurred_at.timestamp()
        kind = str(tp.type)  # str(): StrEnum's value
    limits = _limits(rules)
    newest = state.newest_ts
    if newest is not None and ts < newest - limits.window_seconds:
        return False  # belongs only to windows that have already passed
    if state.cycle_start is not None and ts < state.cycle_start:
        return False  # counted in the cycle that sales has already recycled
    if touch is None:
        touch = (ts, tp.event_id, kind, _topic_of(tp))
        domain = tp.account_domain.lower() if tp.account_domain else None
        _LAST_TOUCH = (tp, touch, domain)
    changed = _insert_top(state.recent, touch, limits.recent)
    if kind in INTENT_TYPES and _newer(state.last_intent, touch):
        state.last_intent = touch
        changed = True
    if _is_talk_to_sales(tp, kind, limits.quiz_score) and _newer(state.last_tts, touch):
        state.last_tts = touch
        changed = True
    if kind == "pricing_page_view":
        changed = _insert_top(state.pricing, touch, limits.pricing) or changed
    if domain:
        held = state.account
        if held is None:
            state.account = (ts, domain)
            changed = True
        elif held[1] == domain:  # the same domain: named or not alike, so the newer time wins
            if ts > held[0]:
                state.account = (ts, domain)
                changed = True
        elif _account_rank((ts, domain), is_named_account) > _account_rank(held,
                                                                           is_named_account):
            state.account = (ts, domain)
            changed = True
    if newest is None or ts > newest:
        state.newest_ts = ts
        _prune(state, rules)
    return changed


def record_profile(state: LeadState, profile: LeadProfile) -> bool:
    """Keep the newest profile; an older one is ignored (SPEC §2.1)."""
    ts = profile.updated_at.timestamp()
    if state.profile_ts is not None and ts < state.profile_ts:
        return False
    state.profile = profile.model_dump(mode="json", exclude_none=True)
    state.profile_ts = ts
    return True
