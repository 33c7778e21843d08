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
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from router.domain.events import (
    INTENT_TYPES,
    TALK_TO_SALES_TYPES,
    BuyingRole,
    Handover,
    LeadProfile,
    QualificationPath,
    Seniority,
    SlaClass,
    Stage,
    Touchpoint,
    Transition,
    format_rfc3339,
)
from router.domain.rules import SENIORITY_RANK, Rules

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

        def touch(t: list[Any] | None) -> Touch | None:
            return tuple(t) if t is not None else None

        return cls(
            lead_id=raw["id"],
            cycle=raw["c"],
            stage=_STAGE_OF.get(raw["s"]) or Stage(raw["s"]),  # Stage(): ValueError if unknown
            newest_ts=raw["n"],
            recent=list(map(tuple, raw["r"])),  # 4-lists on the wire: Touch tuples here
            last_intent=touch(raw["i"]),
            last_tts=touch(raw["t"]),
            pricing=list(map(tuple, raw["p"])),
            profile=raw["pf"],
            profile_ts=raw["pt"],
            account=(raw["a"][0], raw["a"][1]) if raw["a"] is not None else None,
            last_trigger=raw.get("lt"),
            cycle_start=raw.get("cs"),
            mql_at=raw.get("ma"),
        )


@dataclass(frozen=True, slots=True)
class Context:
    """What a decision needs from outside the lead: rules, named accounts and the time."""

    rules: Rules
    router_version: str
    emitted_at: datetime
    is_named_account: Callable[[str], bool] = lambda _domain: False


# --------------------------------------------------------------------------------------------
# State updates
# --------------------------------------------------------------------------------------------


def recent_capacity(rules: Rules) -> int:
    return max(rules.engagement.sql_min_touchpoints, rules.handover.timeline_size)


def pricing_capacity(rules: Rules) -> int:
    buckets = math.ceil(rules.windows.engagement_days / rules.windows.pricing_pair_days)
    return (rules.intent.sql_min_pricing_views - 1) * buckets + 1


def _order(t: Touch) -> tuple[float, str]:
    return (-t[0], t[1])  # newest first, ties broken by event_id


def _insert_top(touches: list[Touch], touch: Touch, capacity: int) -> bool:
    """Insert into a newest-first top-`capacity` list; False for a repeat or a too-old touch."""
    event_id = touch[1]
    for held in touches:
        if held[1] == event_id:
            return False
    if len(touches) >= capacity and _order(touch) > _order(touches[-1]):
        return False
    insort(touches, touch, key=_order)
    del touches[capacity:]
    return True


def _newer(a: Touch | None, b: Touch) -> bool:
    return a is None or (b[0], b[1]) > (a[0], a[1])


def _topic_of(tp: Touchpoint) -> str | None:
    props = tp.properties
    for key in ("topic", "title"):
        value = props.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:_TOPIC_MAX]
    if tp.type == "pricing_page_view":
        return "pricing"
    if tp.type == "competitor_comparison_view":
        return "competitor comparison"
    return None


def is_talk_to_sales(tp: Touchpoint, rules: Rules) -> bool:
    if tp.type in TALK_TO_SALES_TYPES:
        return True
    if tp.type == "quiz_completed":
        score = tp.properties.get("score")
        return (
            isinstance(score, int | float)
            and not isinstance(score, bool)
            and score >= rules.intent.quiz_talk_to_sales_score
        )
    return False


def _prune(state: LeadState, rules: Rules) -> None:
    if state.newest_ts is None:
        return
    cut = state.newest_ts - rules.window_seconds
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
    ts = tp.occurred_at.timestamp()
    if state.newest_ts is not None and ts < state.newest_ts - rules.window_seconds:
        return False  # belongs only to windows that have already passed
    if state.cycle_start is not None and ts < state.cycle_start:
        return False  # counted in the cycle that sales has already recycled
    touch: Touch = (ts, tp.event_id, str(tp.type), _topic_of(tp))  # str(): StrEnum's value
    changed = _insert_top(state.recent, touch, recent_capacity(rules))
    if tp.type in INTENT_TYPES and _newer(state.last_intent, touch):
        state.last_intent = touch
        changed = True
    if is_talk_to_sales(tp, rules) and _newer(state.last_tts, touch):
        state.last_tts = touch
        changed = True
    if tp.type == "pricing_page_view":
        changed = _insert_top(state.pricing, touch, pricing_capacity(rules)) or changed
    if tp.account_domain:
        candidate = (ts, tp.account_domain.lower())
        if state.account is None or _account_rank(candidate, is_named_account) > _account_rank(
            state.account, is_named_account
        ):
            state.account = candidate
            changed = True
    if state.newest_ts is None or ts > state.newest_ts:
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


# --------------------------------------------------------------------------------------------
# Criteria
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assessment:
    """The four criteria for one lead at one moment, with the numbers behind them."""

    fit: bool
    abm: bool
    mql_authority: bool
    sql_authority: bool
    mql_engagement: bool
    sql_engagement: bool
    mql_intent: bool
    sql_intent: bool
    talk_to_sales: bool
    detail: dict[str, Any]

    @property
    def mql(self) -> bool:
        return (
            (self.fit or self.abm)
            and self.mql_authority
            and self.mql_engagement
            and self.mql_intent
        )

    @property
    def sql_standard(self) -> bool:
        return self.fit and self.sql_authority and self.sql_engagement and self.sql_intent

    @property
    def sql_direct(self) -> bool:
        return self.fit and self.sql_authority and self.talk_to_sales

    @property
    def sql_abm(self) -> bool:
        return self.abm and self.sql_authority and self.sql_intent


def _max_within(touches: list[Touch], span: float) -> int:
    """Largest number of touches inside any window of `span` seconds."""
    times = sorted(t[0] for t in touches)
    best, lo = 0, 0
    for hi, ts in enumerate(times):
        while ts - times[lo] > span:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def account_domain(state: LeadState) -> str | None:
    if state.account is not None:
        return state.account[1]
    company = (state.profile or {}).get("company") or {}
    domain = company.get("domain")
    return domain.lower() if isinstance(domain, str) else None


def assess(state: LeadState, rules: Rules, is_named_account: Callable[[str], bool]) -> Assessment:
    profile = state.profile or {}
    company = profile.get("company") or {}
    employees = company.get("employees")
    industry = company.get("industry")
    seniority = Seniority(profile.get("seniority", "unknown"))
    role = BuyingRole(profile.get("buying_role", "unknown"))

    fit_rules = rules.fit
    missing_fit = []
    if employees is None:
        missing_fit.append("employees unknown")
    elif not fit_rules.employees_min <= employees <= fit_rules.employees_max:
        missing_fit.append(
            f"employees {employees} outside [{fit_rules.employees_min}, {fit_rules.employees_max}]"
        )
    if industry is None:
        missing_fit.append("industry unknown")
    elif industry.lower() not in fit_rules.industries:
        missing_fit.append(f"industry {industry!r} not targeted")
    fit = not missing_fit

    domains = {d for d in (account_domain(state), company.get("domain")) if isinstance(d, str)}
    named = sorted(d for d in {d.lower() for d in domains} if is_named_account(d))
    abm = bool(named)

    auth = rules.authority
    mql_authority = (
        SENIORITY_RANK[seniority] >= SENIORITY_RANK[auth.mql.min_seniority]
        or role in auth.mql.buying_roles
    )
    sql_authority = seniority in auth.sql.seniorities or role in auth.sql.buying_roles

    count = len(state.recent)  # already pruned to the window; saturates at recent_capacity
    eng = rules.engagement
    intent_in_window = state.last_intent is not None
    mql_engagement = count >= eng.mql_min_touchpoints
    sql_engagement = count >= eng.sql_min_touchpoints and (
        intent_in_window or not eng.sql_requires_intent
    )

    talk_to_sales = state.last_tts is not None
    pricing_cluster = _max_within(state.pricing, rules.pricing_pair_seconds)
    mql_intent = intent_in_window
    sql_intent = talk_to_sales or pricing_cluster >= rules.intent.sql_min_pricing_views

    detail = {
        "fit": {
            "met": fit,
            "employees": employees,
            "industry": industry,
            "named_account": named[0] if named else None,
            "missing": missing_fit,
        },
        "authority": {
            "seniority": seniority.value,
            "buying_role": role.value,
            "mql_met": mql_authority,
            "sql_met": sql_authority,
        },
        "engagement": {
            "touchpoints_in_window": count,
            "window_days": rules.windows.engagement_days,
            "mql_required": eng.mql_min_touchpoints,
            "sql_required": eng.sql_min_touchpoints,
            "intent_among_them": intent_in_window,
            "mql_met": mql_engagement,
            "sql_met": sql_engagement,
        },
        "intent": {
            "last_intent": state.last_intent[2] if state.last_intent else None,
            "talk_to_sales": state.last_tts[1] if state.last_tts else None,
            "pricing_views_within_pair_window": pricing_cluster,
            "pricing_views_required": rules.intent.sql_min_pricing_views,
            "pair_window_days": rules.windows.pricing_pair_days,
            "mql_met": mql_intent,
            "sql_met": sql_intent,
        },
    }
    return Assessment(
        fit=fit,
        abm=abm,
        mql_authority=mql_authority,
        sql_authority=sql_authority,
        mql_engagement=mql_engagement,
        sql_engagement=sql_engagement,
        mql_intent=mql_intent,
        sql_intent=sql_intent,
        talk_to_sales=talk_to_sales,
        detail=detail,
    )


def missing_for_next_stage(state: LeadState, a: Assessment) -> list[str]:
    """Plain words for "why is this lead not SQL (or MQL) yet"."""
    if state.stage is Stage.SQL:
        return []
    d = a.detail
    out: list[str] = []
    if not (a.fit or a.abm):
        out.append("fit: " + "; ".join(d["fit"]["missing"]))
    if not a.sql_authority:
        out.append(
            f"authority: {d['authority']['seniority']}/{d['authority']['buying_role']}"
            " is below SQL authority"
        )
    e = d["engagement"]
    if not a.sql_engagement and not a.abm:
        out.append(
            f"engagement {e['touchpoints_in_window']}/{e['sql_required']}"
            f" in {e['window_days']} days"
            + ("" if e["intent_among_them"] else ", no intent touchpoint among them")
        )
    if not a.sql_intent:
        i = d["intent"]
        out.append(
            "intent: no talk-to-sales action yet and"
            f" {i['pricing_views_within_pair_window']}/{i['pricing_views_required']}"
            f" pricing views within {i['pair_window_days']} days"
        )
    return out


# --------------------------------------------------------------------------------------------
# Score and handover
# --------------------------------------------------------------------------------------------

_SENIORITY_SCORE = {
    Seniority.C_LEVEL: 1.0,
    Seniority.VP: 0.9,
    Seniority.DIRECTOR: 0.8,
    Seniority.MANAGER: 0.6,
    Seniority.SENIOR_IC: 0.4,
    Seniority.IC: 0.2,
    Seniority.UNKNOWN: 0.0,
}
_ROLE_SCORE = {
    BuyingRole.DECISION_MAKER: 1.0,
    BuyingRole.INFLUENCER: 0.7,
    BuyingRole.END_USER: 0.4,
    BuyingRole.RESEARCHER: 0.3,
    BuyingRole.UNKNOWN: 0.0,
}


def score(a: Assessment, rules: Rules) -> int:
    """0-100 for prioritising; never used for the stage decision."""
    w = rules.score.weights
    d = a.detail
    # fit: full when fit (or ABM), else half a point per known-and-matching attribute
    fit_part = 1.0 if a.fit or a.abm else 0.5 * (2 - len(d["fit"]["missing"]))
    authority_part = max(
        _SENIORITY_SCORE[Seniority(d["authority"]["seniority"])],
        _ROLE_SCORE[BuyingRole(d["authority"]["buying_role"])],
    )
    engagement_part = min(
        d["engagement"]["touchpoints_in_window"] / rules.score.engagement_saturation, 1.0
    )
    if a.talk_to_sales:
        intent_part = 1.0
    elif a.sql_intent:
        intent_part = 0.7
    elif a.mql_intent:
        intent_part = 0.4
    else:
        intent_part = 0.0
    total: float = (
        w.fit * fit_part
        + w.authority * authority_part
        + w.engagement * engagement_part
        + w.intent * intent_part
    )
    return max(0, min(100, round(total)))


def _touch_json(t: Touch) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_id": t[1],
        "type": t[2],
        "occurred_at": format_rfc3339(datetime.fromtimestamp(t[0], UTC)),
    }
    if t[3] is not None:
        out["topic"] = t[3]
    return out


def sla_class(state: LeadState) -> SlaClass:
    return SlaClass.HIGH_INTENT if state.last_tts is not None else SlaClass.BEHAVIOURAL


def handover(state: LeadState, a: Assessment, rules: Rules) -> Handover:
    signals: dict[str, Touch] = {}
    for t in (*state.recent, *state.pricing, state.last_intent, state.last_tts):
        if t is not None and t[2] in INTENT_TYPES:
            signals[t[1]] = t
    ordered_signals = sorted(signals.values(), key=_order)
    points: list[str] = []
    for t in (*state.recent, *ordered_signals):
        if t[3] and t[3] not in points:
            points.append(t[3])
    return Handover(
        profile=state.profile,
        fit=a.detail["fit"],
        engagement_timeline=[_touch_json(t) for t in state.recent[: rules.handover.timeline_size]],
        intent_signals=[_touch_json(t) for t in ordered_signals],
        authority=a.detail["authority"],
        score=score(a, rules),
        talking_points=points[: rules.handover.talking_points],
        sla_class=sla_class(state),
    )


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
