"""The SPEC §3 criteria (fit, authority, engagement, intent) for one lead at one moment.

Apart from the lead state and the decisions because reading the state is all it does: the
decisions, the score, the inspection views and replay's explanations all ask it the same
question. Pure: no Kafka, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from router.domain.events import BuyingRole, Seniority, Stage
from router.domain.lead_state import LeadState, Touch
from router.domain.rules import SENIORITY_RANK, Rules


@dataclass(slots=True)
class Assessment:
    """The four criteria for one lead at one moment, with the numbers behind them.

    Not frozen, though nothing changes it: a frozen dataclass's __init__ sets each field
    through object.__setattr__, a microsecond per assessment, and a touch is assessed often."""

    fit: bool
    abm: bool
    mql_authority: bool
    sql_authority: bool
    mql_engagement: bool
    sql_engagement: bool
    mql_intent: bool
    sql_intent: bool
    talk_to_sales: bool
    # the numbers `detail` shows, taken when assessed: most assessments decide
    # that nothing moves and nobody reads their detail, so its dicts are built on first read
    numbers: tuple[Any, ...] = field(repr=False)
    _detail: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def detail(self) -> dict[str, Any]:
        if self._detail is None:
            self._detail = _detail(self)
        return self._detail

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
    if len(touches) < 2:
        return len(touches)  # what the loop below gives for none or one
    times = sorted([t[0] for t in touches])
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


_SENIORITY_OF: dict[str, Seniority] = {s.value: s for s in Seniority}
_ROLE_OF: dict[str, BuyingRole] = {r.value: r for r in BuyingRole}


def _seniority(value: Any) -> Seniority:
    """Seniority(value) (a ValueError for an unknown one), without an Enum call when known."""
    known = _SENIORITY_OF.get(value) if isinstance(value, str) else None
    return known if known is not None else Seniority(value)


def _role(value: Any) -> BuyingRole:
    known = _ROLE_OF.get(value) if isinstance(value, str) else None
    return known if known is not None else BuyingRole(value)


def assess(state: LeadState, rules: Rules, is_named_account: Callable[[str], bool]) -> Assessment:
    profile = state.profile or {}
    company = profile.get("company") or {}
    employees = company.get("employees")
    industry = company.get("industry")
    seniority = _seniority(profile.get("seniority", "unknown"))
    role = _role(profile.get("buying_role", "unknown"))

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

    domains = {d.lower() for d in (account_domain(state), company.get("domain"))
               if isinstance(d, str)}
    named = sorted([d for d in domains if is_named_account(d)])
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

    numbers = (  # in the order _detail unpacks them
        employees, industry, named[0] if named else None, missing_fit,
        seniority.value, role.value,
        count, rules.windows.engagement_days, eng.mql_min_touchpoints, eng.sql_min_touchpoints,
        state.last_intent[2] if state.last_intent else None,
        state.last_tts[1] if state.last_tts else None,
        pricing_cluster, rules.intent.sql_min_pricing_views, rules.windows.pricing_pair_days,
    )
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
        numbers=numbers,
    )


def _detail(a: Assessment) -> dict[str, Any]:
    (employees, industry, named_account, missing_fit, seniority, role, count, window_days,
     mql_required, sql_required, last_intent, tts, pricing_cluster, pricing_required,
     pair_days) = a.numbers
    return {
        "fit": {
            "met": a.fit,
            "employees": employees,
            "industry": industry,
            "named_account": named_account,
            "missing": missing_fit,
        },
        "authority": {
            "seniority": seniority,
            "buying_role": role,
            "mql_met": a.mql_authority,
            "sql_met": a.sql_authority,
        },
        "engagement": {
            "touchpoints_in_window": count,
            "window_days": window_days,
            "mql_required": mql_required,
            "sql_required": sql_required,
            "intent_among_them": a.mql_intent,
            "mql_met": a.mql_engagement,
            "sql_met": a.sql_engagement,
        },
        "intent": {
            "last_intent": last_intent,
            "talk_to_sales": tts,
            "pricing_views_within_pair_window": pricing_cluster,
            "pricing_views_required": pricing_required,
            "pair_window_days": pair_days,
            "mql_met": a.mql_intent,
            "sql_met": a.sql_intent,
        },
    }


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
