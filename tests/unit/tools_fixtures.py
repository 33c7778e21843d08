"""A small history whose figures can be worked out by hand (default rules, SPEC §3).

Leads (all at Acme: 420 employees, saas, so they fit):
- L1 director/decision_maker: page view, pricing, pricing, content download -> MQL (2nd touch),
  SQL standard (4th touch: 4 touchpoints, an intent among them, 2 pricing views in 7 days);
- L2 vp/decision_maker: a demo request -> SQL direct (no MQL);
- L3 manager/influencer: page view, pricing -> MQL only (manager is below SQL authority);
- L4 ic/end_user: pricing, pricing -> nothing (no MQL authority);
- L5 director/decision_maker, 30 employees: demo request -> nothing (does not fit).
Sales: R-01 (pool NA, capacity 1) accepts L1 an hour after its SQL, rejects L2 (no_fit).

Also what several tools' tests share: STRICT (rules to compare with the defaults),
simulate_strict, and `week`, a week of hand-written outputs for `leadrouter report`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from router.domain.rules import load_rules, parse_rules
from router.tools.history import (
    ACCOUNTS,
    ACTIVITY,
    ASSIGNMENTS,
    PROFILES,
    REPS,
    SLA,
    TOUCHPOINTS,
    TRANSITIONS,
    History,
    HistoryRecord,
    TimeRange,
)
from router.tools.simulate import simulate

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a Monday


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def profile(lead: str, seniority: str, role: str, employees: int = 420,
            country: str = "US") -> dict[str, Any]:
    return {"lead_id": lead, "updated_at": iso(T0 - timedelta(days=1)), "seniority": seniority,
            "buying_role": role, "language": "en", "country": country,
            "company": {"name": "Acme", "domain": "acme.io", "employees": employees,
                        "industry": "saas"}}


def touch(lead: str, n: int, kind: str, minutes: float, channel: str = "web",
          campaign: str | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"campaign": campaign} if campaign else {}
    return {"event_id": f"tp-{lead}-{n}", "lead_id": lead, "type": kind,
            "occurred_at": iso(at(minutes)), "channel": channel, "properties": props}


def activity(lead: str, kind: str, minutes: float, reason: str | None = None,
             rep: str = "R-01") -> dict[str, Any]:
    out = {"event_id": f"sa-{lead}-{kind}", "lead_id": lead, "rep_id": rep, "type": kind,
           "occurred_at": iso(at(minutes))}
    if reason:
        out["reason"] = reason
    return out


PROFILES_IN = [
    profile("L1", "director", "decision_maker"),
    profile("L2", "vp", "decision_maker"),
    profile("L3", "manager", "influencer"),
    profile("L4", "ic", "end_user"),
    profile("L5", "director", "decision_maker", employees=30),
]
TOUCHES_IN = [
    touch("L1", 1, "page_view", 0, campaign="q4-webinar"),
    touch("L1", 2, "pricing_page_view", 10),
    touch("L1", 3, "pricing_page_view", 20),
    touch("L1", 4, "content_download", 30, channel="email", campaign="nurture"),
    touch("L2", 1, "demo_request", 5, channel="ads", campaign="search"),
    touch("L3", 1, "page_view", 0),
    touch("L3", 2, "pricing_page_view", 15),
    touch("L4", 1, "pricing_page_view", 0),
    touch("L4", 2, "pricing_page_view", 1),
    touch("L5", 1, "demo_request", 3),
]
ACTIVITY_IN = [
    activity("L1", "first_touch", 32),
    activity("L1", "accepted", 90),
    activity("L2", "first_touch", 8),
    activity("L2", "rejected", 20, reason="no_fit"),
]
REPS_IN = [{"rep_id": "R-01", "pools": ["NA"], "languages": ["en"], "max_open_leads": 1,
            "working_hours": {d: ["00:00", "24:00"] for d in
                              ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}}]


def record(topic: str, offset: int, value: dict[str, Any] | bytes, key: str | None,
           when: datetime) -> HistoryRecord:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return HistoryRecord(topic, 0, offset, when.timestamp(), key.encode() if key else None, raw)


def history(extra: dict[str, list[HistoryRecord]] | None = None) -> History:
    """The inputs above, each record stamped with its event time (as a live producer would)."""
    h = History(source="fixture")
    h.records[PROFILES] = [record(PROFILES, i, p, p["lead_id"], T0 - timedelta(days=1))
                           for i, p in enumerate(PROFILES_IN)]
    h.records[TOUCHPOINTS] = [record(TOUCHPOINTS, i, t, t["lead_id"],
                                     datetime.fromisoformat(t["occurred_at"]))
                              for i, t in enumerate(TOUCHES_IN)]
    h.records[ACTIVITY] = [record(ACTIVITY, i, a, a["lead_id"],
                                  datetime.fromisoformat(a["occurred_at"]))
                           for i, a in enumerate(ACTIVITY_IN)]
    h.records[REPS] = [record(REPS, i, r, r["rep_id"], T0 - timedelta(days=2))
                       for i, r in enumerate(REPS_IN)]
    h.records[ACCOUNTS] = []
    for topic, records in (extra or {}).items():
        h.records.setdefault(topic, []).extend(records)
    return h


# --------------------------------------------------------------------------------------------
# Rules to compare with the defaults (replay, simulate)
# --------------------------------------------------------------------------------------------

# SQL authority only from VP up: L1 (a director) stops at MQL
STRICT = parse_rules("name: strict\nauthority:\n  sql:\n    seniorities: [vp, c_level]\n"
                     "    buying_roles: []\n", "strict.yaml")


def simulate_strict(h: History) -> dict[str, Any]:
    """`leadrouter simulate`'s summary of `h`: the default rules against STRICT, all time."""
    return simulate(h, load_rules(), STRICT, TimeRange(None, None)).summary


# --------------------------------------------------------------------------------------------
# Outputs written by hand (report)
# --------------------------------------------------------------------------------------------


def out(topic: str, events: list[tuple[float, dict[str, Any]]]) -> list[HistoryRecord]:
    return [record(topic, i, e, e["lead_id"], at(m)) for i, (m, e) in enumerate(events)]


def transition(kind: str, lead: str, path: str | None, trigger: str) -> dict[str, Any]:
    return {"event_id": f"{lead}:c1:{kind}", "type": f"lead.{kind}", "lead_id": lead,
            "cycle": 1, "path": path, "triggered_by": trigger}


def assignment(kind: str, lead: str, rep: str | None, pool: str, klass: str,
               seq: int = 1) -> dict[str, Any]:
    ident = f"{lead}:c1:queued" if kind == "queued" else f"{lead}:c1:assign:{seq}"
    return {"event_id": ident, "type": f"lead.{kind}", "lead_id": lead, "cycle": 1,
            "rep_id": rep, "pool": pool, "sla": {"class": klass, "due_at": iso(T0)}}


def sla(kind: str, lead: str, rep: str, pool: str, klass: str) -> dict[str, Any]:
    return {"event_id": f"{lead}:c1:sla:1:{kind}", "type": f"sla.{kind}", "lead_id": lead,
            "cycle": 1, "rep_id": rep, "pool": pool, "sla_class": klass}


def week() -> History:
    """A week of outputs beside the small history, for `leadrouter report` (every figure
    counted by hand in tests/unit/test_report.py)."""
    h = history()  # its touchpoints (channels, campaigns); its activity is replaced below
    h.records[TRANSITIONS] = out(TRANSITIONS, [
        (10, transition("mql", "L1", "standard", "tp-L1-2")),
        (15, transition("mql", "L3", "standard", "tp-L3-2")),
        (5, transition("sql", "L2", "direct", "tp-L2-1")),
        (30, transition("sql", "L1", "standard", "tp-L1-4")),
        (30, transition("sql", "L1", "standard", "tp-L1-4")),  # a repeat: dropped
        (40, transition("sql", "L6", "abm", "profile@2026-11-02T09:40:00Z")),
    ])
    h.records[ASSIGNMENTS] = out(ASSIGNMENTS, [
        (5, assignment("assigned", "L2", "R-02", "EMEA", "high_intent")),
        (30, assignment("assigned", "L1", "R-01", "NA", "behavioural")),
        (40, assignment("queued", "L6", None, "NA", "behavioural")),
        (45, assignment("assigned", "L6", "R-01", "NA", "behavioural")),
    ])
    h.records[ACTIVITY] = [record(ACTIVITY, i, a, a["lead_id"],
                                     datetime.fromisoformat(a["occurred_at"]))
                           for i, a in enumerate([
                               activity("L2", "first_touch", 15, rep="R-02"),
                               activity("L2", "rejected", 20, "could_not_reach", "R-02"),
                               activity("L1", "first_touch", 32),
                               activity("L1", "accepted", 50),
                               activity("L6", "first_touch", 46),
                               activity("L6", "rejected", 50, "no_fit"),
                               activity("L3", "accepted", 50, rep="R-09"),  # not the holder
                           ])]
    h.records[SLA] = out(SLA, [
        (10, sla("breached", "L2", "R-02", "EMEA", "high_intent")),
        (32, sla("met", "L1", "R-01", "NA", "behavioural")),
        (46, sla("met", "L6", "R-01", "NA", "behavioural")),
    ])
    return h
