"""Builders shared by unit test modules: plain events and records, no Kafka.

Builders used by one test module stay in it; the ones several modules use live here, so no
test module imports another (the tools' small history is in tools_fixtures.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from router.adapters.topics import Topics
from router.domain.events import LeadProfile, Touchpoint, Transition
from router.domain.lead_state import LeadState
from router.domain.qualification import Context, apply_profile, apply_touchpoint
from router.domain.rules import Rules, load_rules
from router.records import Record

RULES = load_rules()
TOPICS = Topics.with_prefix("")
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday


# --------------------------------------------------------------------------------------------
# Qualification events for the pure engine (test_qualification, test_inspection)
# --------------------------------------------------------------------------------------------

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
LEAD = "L-1"
NAMED_ACCOUNTS = frozenset({"bigco.com"})


def at(day: float) -> datetime:
    return T0 + timedelta(days=day)


def profile(
    *,
    seniority: str = "director",
    role: str = "decision_maker",
    employees: int | None = 420,
    industry: str | None = "saas",
    domain: str = "acme.io",
    day: float = 0,
    company: bool = True,
    **extra: Any,
) -> LeadProfile:
    """A lead that is fit with SQL authority unless told otherwise."""
    data: dict[str, Any] = {
        "lead_id": LEAD,
        "updated_at": at(day).isoformat(),
        "seniority": seniority,
        "buying_role": role,
        **extra,
    }
    if company:
        data["company"] = {"name": "Acme", "domain": domain, "employees": employees,
                           "industry": industry}
    return LeadProfile.model_validate(data)


def tp(
    type: str,
    day: float = 0,
    *,
    id: str | None = None,
    domain: str | None = None,
    score: Any = None,
    **props: Any,
) -> Touchpoint:
    """A touchpoint `day` days after T0; its id defaults to `<type>-d<day>`."""
    properties = dict(props)
    if score is not None:
        properties["score"] = score
    return Touchpoint.model_validate(
        {
            "event_id": id or f"{type}-d{day:g}",
            "lead_id": LEAD,
            "type": type,
            "occurred_at": at(day).isoformat(),
            "account_domain": domain,
            "properties": properties,
        }
    )


def ctx(rules: Rules = RULES, named: frozenset[str] = NAMED_ACCOUNTS) -> Context:
    return Context(rules=rules, router_version="test", emitted_at=at(100),
                   is_named_account=named.__contains__)


Event = Touchpoint | LeadProfile


def apply(state: LeadState, event: Event, context: Context) -> list[Transition]:
    if isinstance(event, Touchpoint):
        return apply_touchpoint(state, event, context)
    return apply_profile(state, event, context)


def run(events: Sequence[Event], rules: Rules = RULES) -> tuple[LeadState, list[Transition]]:
    state = LeadState(LEAD)
    context = ctx(rules)
    out: list[Transition] = []
    for event in events:
        out.extend(apply(state, event, context))
    return state, out


# --------------------------------------------------------------------------------------------
# Sales activity (the leads stage forwards it, the routing stage applies it)
# --------------------------------------------------------------------------------------------


def activity(lead: str, rep_id: str, type: str, *, at: datetime = NOW,
             reason: str | None = None, event_id: str = "sa-1") -> dict[str, Any]:
    data: dict[str, Any] = {"event_id": event_id, "lead_id": lead, "rep_id": rep_id,
                            "type": type, "occurred_at": at.isoformat()}
    if reason is not None:
        data["reason"] = reason
    return data


def activity_input(offset: int, data: Mapping[str, Any], partition: int = 3) -> Record:
    """A record as it arrives on sales.activity."""
    return Record(TOPICS.activity, partition, offset, str(data["lead_id"]).encode(),
                  orjson.dumps(data))
