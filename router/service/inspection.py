"""Lead and rep inspection views (SPEC §7): what a revenue-ops person asks when a lead is
"stuck" - which stage, which criterion is missing and by how much, who holds it, where its
SLA clock stands, and what happened last.

Pure functions over the two pieces of state the worker keeps: the lead's qualification state
(on the worker owning the lead's partition) and the routing state (on the worker owning the
one routing partition). The worker's web views fetch each piece from its owner and join them
here; `leadrouter lead show` renders the joined view as text. Nothing personal is rendered in
full: the profile shows company facts, seniority and role only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from router.domain.criteria import account_domain, assess, missing_for_next_stage
from router.domain.decay import DECAYED, decay_deadline
from router.domain.events import Rep, Stage, format_rfc3339
from router.domain.handover import score, sla_class
from router.domain.lead_state import LeadState
from router.domain.routing import current_out_of_office
from router.domain.routing_state import Holding, Queued, RoutingState
from router.domain.rules import Rules

LAST_EVENTS = 10


def _iso(ts: float | None) -> str | None:
    return None if ts is None else format_rfc3339(datetime.fromtimestamp(ts, UTC))


def decay_part(state: LeadState, rules: Rules) -> dict[str, Any] | None:
    """When this MQL goes back to nurture unless it engages, or that the last cycle did."""
    deadline = decay_deadline(state, rules)
    if deadline is not None:
        return {"state": "pending", "due_at": _iso(deadline),
                "window_days": round((rules.decay_seconds or 0) / 86400.0, 6)}
    trigger = state.last_trigger or ""
    if state.stage is Stage.NEW and trigger.startswith("decay@"):
        return {"state": DECAYED, "cycle": state.cycle - 1, "at": trigger.removeprefix("decay@")}
    return None


def qualification_part(state: LeadState, rules: Rules,
                       is_named_account: Callable[[str], bool]) -> dict[str, Any]:
    """Stage, cycle and each criterion with its numbers, from the lead's qualification state."""
    a = assess(state, rules, is_named_account)
    d = a.detail
    e, i = d["engagement"], d["intent"]
    criteria = {
        "fit": {
            **d["fit"],
            "met": a.fit or a.abm,
            "summary": (
                f"named account {d['fit']['named_account']}" if a.abm
                else "fit" if a.fit else "; ".join(d["fit"]["missing"])
            ),
        },
        "authority": {
            **d["authority"],
            "met": a.sql_authority,
            "summary": (
                f"{d['authority']['seniority']}/{d['authority']['buying_role']}: "
                + ("meets SQL authority" if a.sql_authority
                   else "meets MQL authority only" if a.mql_authority
                   else "below MQL authority")
            ),
        },
        "engagement": {
            **e,
            "met": a.sql_engagement,
            "summary": (
                f"engagement {e['touchpoints_in_window']}/{e['sql_required']}"
                f" in {e['window_days']} days"
                + ("" if e["intent_among_them"] else ", no intent touchpoint among them")
            ),
        },
        "intent": {
            **i,
            "met": a.sql_intent,
            "summary": (
                "talk-to-sales action " + str(i["talk_to_sales"]) if a.talk_to_sales
                else "intent: no talk-to-sales action yet;"
                f" {i['pricing_views_within_pair_window']}/{i['pricing_views_required']}"
                f" pricing views within {i['pair_window_days']} days"
            ),
        },
    }
    touches = sorted({t[1]: t for t in (*state.recent, *state.pricing, state.last_intent,
                                        state.last_tts) if t is not None}.values(),
                     key=lambda t: (-t[0], t[1]))
    profile = state.profile or {}
    company = profile.get("company") or {}
    return {
        "stage": state.stage.value,
        "cycle": state.cycle,
        "score": score(a, rules),
        "sla_class": sla_class(state).value,
        "account_domain": account_domain(state),
        "criteria": criteria,
        "paths": {"mql": a.mql, "sql_standard": a.sql_standard, "sql_direct": a.sql_direct,
                  "sql_abm": a.sql_abm},
        "missing": missing_for_next_stage(state, a),
        "profile": {
            "updated_at": _iso(state.profile_ts),
            "country": profile.get("country"),
            "language": profile.get("language"),
            "seniority": profile.get("seniority"),
            "buying_role": profile.get("buying_role"),
            "company": {k: company.get(k) for k in ("domain", "employees", "industry")},
        } if state.profile is not None else None,
        "last_events": [
            {"occurred_at": _iso(t[0]), "event_id": t[1], "type": t[2]}
            for t in touches[:LAST_EVENTS]
        ],
        "last_trigger": state.last_trigger,
        "decay": decay_part(state, rules),
    }


def _sla_state(h: Holding) -> str:
    if h.first_touch_at is not None:
        return "met late (first touch after breach)" if h.breached else "met"
    if h.ended_by is not None:
        return f"ended ({h.ended_by})"
    if h.breached:
        return "breached"
    return "warning" if h.warned else "running"


def routing_part(lead_id: str, state: RoutingState) -> dict[str, Any] | None:
    """Holder, SLA clock and queue position, from the routing state; None if never routed."""
    h = state.holdings.get(lead_id)
    if h is not None:
        return {
            "status": "assigned" if h.open else "closed",
            "cycle": h.cycle,
            "rep_id": h.rep_id,
            "pool": h.pool,
            "rule": h.rule,
            "assignment": h.seq,
            "sla": {
                "class": h.sla_class.value,
                "state": _sla_state(h),
                "started_at": _iso(h.started_at),
                "warn_at": _iso(h.warn_at),
                "due_at": _iso(h.due_at),
                "first_touch_at": _iso(h.first_touch_at),
                "breached_by": list(h.breached_by),
            },
            "ended_by": h.ended_by,
        }
    for pool, queue in sorted(state.queues.items()):
        for position, q in enumerate(queue, start=1):
            if q.request.lead_id == lead_id:
                return _queued_part(q, pool, position, len(queue))
    return None


def _queued_part(q: Queued, pool: str, position: int, length: int) -> dict[str, Any]:
    return {
        "status": "queued",
        "cycle": q.request.cycle,
        "pool": pool,
        "queue_position": position,
        "queue_length": length,
        "sla": {
            "class": q.request.sla_class.value,
            "state": "breached" if q.breached else "warning" if q.warned else "running",
            "started_at": _iso(q.queued_at),
            "warn_at": _iso(q.warn_at),
            "due_at": _iso(q.due_at),
        },
    }


def lead_view(lead_id: str, qualification: dict[str, Any] | None,
              routing: dict[str, Any] | None) -> dict[str, Any]:
    """The joined view; `known` is False when the router has never seen the lead."""
    routed = routing if routing is not None and (
        qualification is None or routing.get("cycle") == qualification["cycle"]
    ) else None
    return {
        "lead_id": lead_id,
        "known": qualification is not None,
        "qualification": qualification,
        # a holding from an earlier cycle is history, not the current holder
        "routing": routed,
        "previous_cycle_routing": routing if routing is not None and routed is None else None,
    }


def rep_view(roster: Mapping[str, Rep], state: RoutingState, now: datetime) -> dict[str, Any]:
    """Every rep with open leads, capacity and out-of-office state; every pool's queue."""
    reps = []
    for rep_id in sorted(set(roster) | set(state.open_by_rep)):
        rep = roster.get(rep_id)
        window = current_out_of_office(rep, now) if rep is not None else None
        open_leads = sorted(state.open_by_rep.get(rep_id, ()))
        reps.append({
            "rep_id": rep_id,
            "on_roster": rep is not None,
            "active": rep.active if rep is not None else False,
            "pools": list(rep.pools) if rep is not None else [],
            "languages": list(rep.languages) if rep is not None else [],
            "open_leads": len(open_leads),
            "max_open_leads": rep.max_open_leads if rep is not None else None,
            "open_lead_ids": open_leads,
            "out_of_office": None if window is None else {
                "start": format_rfc3339(window.start), "end": format_rfc3339(window.end),
                "backup_rep_id": window.backup_rep_id,
            },
        })
    queues = {
        pool: {"length": len(queue),
               "oldest_queued_at": _iso(min(q.queued_at for q in queue)),
               "lead_ids": [q.request.lead_id for q in queue]}
        for pool, queue in sorted(state.queues.items()) if queue
    }
    return {"at": format_rfc3339(now), "reps": reps, "queues": queues}


def render_lead(view: Mapping[str, Any]) -> str:
    """Plain text for `leadrouter lead show`."""
    lines = [f"lead {view['lead_id']}"]
    q = view.get("qualification")
    if q is None:
        lines.append("  not seen by the router (no touchpoint or profile for this lead_id)")
        return "\n".join(lines)
    placed = q.get("partitioning")
    if placed is not None:
        found_on = ", ".join(map(str, placed["found_on_partitions"]))
        lines.append(f"  partitions: found on {found_on}, its key hashes (murmur2) to"
                     f" {placed['murmur2_partition']}: {placed['note']}")
    lines.append(f"  stage {q['stage'].upper()}  cycle {q['cycle']}  score {q['score']}"
                 f"  sla class {q['sla_class']}")
    for name, c in q["criteria"].items():
        lines.append(f"  {'+' if c['met'] else '-'} {name:<10} {c['summary']}")
    if q["stage"] != Stage.SQL.value and q["missing"]:
        lines.append("  missing for SQL: " + " | ".join(q["missing"]))
    decay = q.get("decay")
    if decay is not None and decay["state"] == "pending":
        lines.append(f"  decay: back to nurture at {decay['due_at']} unless it engages"
                     f" ({decay['window_days']:g} days without engagement)")
    elif decay is not None:
        lines.append(f"  decayed: cycle {decay['cycle']} went back to nurture at {decay['at']}"
                     " (no engagement for the whole window)")
    r = view.get("routing")
    if r is None:
        lines.append("  routing: not routed in this cycle")
    elif r["status"] == "queued":
        lines.append(f"  routing: queued in pool {r['pool']}, position {r['queue_position']}"
                     f" of {r['queue_length']}")
    else:
        lines.append(f"  routing: {r['status']} to {r['rep_id']} (pool {r['pool']},"
                     f" rule {r['rule']}, assignment {r['assignment']})")
    if r is not None:
        sla = r["sla"]
        lines.append(f"  sla: {sla['state']}, due {sla['due_at']}"
                     + (f", first touch {sla['first_touch_at']}"
                        if sla.get("first_touch_at") else ""))
    lines.append("  last events:")
    for event in q["last_events"]:
        lines.append(f"    {event['occurred_at']}  {event['type']:<18} {event['event_id']}")
    return "\n".join(lines)


def render_reps(view: Mapping[str, Any]) -> str:
    lines = [f"{'rep':<16} {'open':>9}  {'pools':<24} out of office"]
    for rep in view["reps"]:
        capacity = f"{rep['open_leads']}/{rep['max_open_leads']}" \
            if rep["max_open_leads"] is not None else f"{rep['open_leads']}/-"
        ooo = rep["out_of_office"]
        away = f"until {ooo['end']} (backup {ooo['backup_rep_id']})" if ooo else "-"
        flag = "" if rep["active"] else " (inactive)" if rep["on_roster"] else " (off roster)"
        lines.append(f"{rep['rep_id'] + flag:<16} {capacity:>9}  {','.join(rep['pools']):<24}"
                     f" {away}")
    for pool, queue in view["queues"].items():
        lines.append(f"queue {pool}: {queue['length']} waiting since {queue['oldest_queued_at']}")
    return "\n".join(lines)
