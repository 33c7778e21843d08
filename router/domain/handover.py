"""The 0-100 score and the handover an SQL carries to sales (SPEC §3).

Apart from the criteria because neither decides a stage: they turn an assessment and the lead
state into what a rep reads. Pure: no Kafka, no clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from router.domain.criteria import Assessment
from router.domain.events import (
    INTENT_TYPES,
    BuyingRole,
    Handover,
    Seniority,
    SlaClass,
    format_rfc3339,
)
from router.domain.lead_state import LeadState, Touch, touch_order
from router.domain.rules import Rules

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
    ordered_signals = sorted(signals.values(), key=touch_order)
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
