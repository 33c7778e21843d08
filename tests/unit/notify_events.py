"""Router output events for the notifier's unit tests (tests/unit/test_notify_*.py), built with
the router's own pydantic models and decoded as the notifier receives them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from router.domain.events import Assignment, SlaEvent, TraceEntry, Transition

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
DUE = NOW + timedelta(minutes=5)
EMAIL = "ana.ruiz@acme.io"
NAME = "Ana Ruiz"
COMMON: dict[str, Any] = {"router_version": "test", "rules_version": "default@1",
                          "emitted_at": NOW.isoformat()}


def wire(model: Any) -> dict[str, Any]:
    """What the router publishes (router.adapters.wire.encode), decoded."""
    result: dict[str, Any] = orjson.loads(
        orjson.dumps(model.model_dump(mode="json", by_alias=True)))
    return result


def step(**fields: Any) -> dict[str, Any]:
    return TraceEntry.model_validate(fields).model_dump(mode="json")


def assignment(kind: str = "lead.assigned", rep: str | None = "R-07", lead: str = "L-1001",
               trace: list[dict[str, Any]] | None = None, rule: str | None = "round_robin"
               ) -> dict[str, Any]:
    return wire(Assignment.model_validate({
        "event_id": f"{lead}:c1:assign:1", "type": kind, "lead_id": lead, "cycle": 1,
        "rep_id": rep, "pool": "EMEA-MM", "rule": rule,
        "trace": trace if trace is not None else [
            step(rep_id="R-04", skipped="at_capacity", detail="30/30 open"),
            step(rep_id="R-05", skipped="out_of_office", detail="until 2027-01-04"),
            step(rep_id=rep, chosen="round_robin")],
        "sla": {"class": "high_intent", "due_at": DUE.isoformat()}, **COMMON}))


def sla_event(kind: str, rep: str | None = "R-07", **extra: Any) -> dict[str, Any]:
    return wire(SlaEvent.model_validate({
        "event_id": f"L-1001:c1:{kind}", "type": kind, "lead_id": "L-1001", "cycle": 1,
        "rep_id": rep, "pool": "EMEA-MM", "sla_class": "high_intent",
        "started_at": NOW.isoformat(), "due_at": DUE.isoformat(),
        "occurred_at": (NOW + timedelta(minutes=4)).isoformat(), **extra, **COMMON}))


def sql_transition(company: str = "Acme") -> dict[str, Any]:
    profile = {"lead_id": "L-1001", "email": EMAIL, "name": NAME,
               "title": "Director of Marketing", "seniority": "director",
               "buying_role": "decision_maker", "language": "es", "country": "ES",
               "company": {"name": company, "domain": "acme.io", "employees": 420,
                           "industry": "saas"}}
    return wire(Transition.model_validate({
        "event_id": "L-1001:c1:sql", "type": "lead.sql", "lead_id": "L-1001", "cycle": 1,
        "from_stage": "mql", "to_stage": "sql", "path": "direct", "triggered_by": "tp-8c1e",
        "occurred_at": NOW.isoformat(), "criteria": {}, "score": 87,
        "handover": {
            "profile": profile, "fit": {"fit": True}, "engagement_timeline": [],
            "intent_signals": [{"event_id": "tp-1", "type": "pricing_page_view"},
                               {"event_id": "tp-8c1e", "type": "demo_request"}],
            "authority": {"sql": True}, "score": 87,
            "talking_points": ["data quality", "pricing"], "sla_class": "high_intent"},
        **COMMON}))

