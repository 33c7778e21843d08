"""How a notification looks: the Slack-compatible `{"text": ..., "blocks": [...]}` message for
one router event, and the masked handover summary of a `lead.sql` it may carry.

Pure functions (no I/O, no logging), so the rendering, the mrkdwn escaping, Slack's block
limits and the masking of lead emails and names (with `router.logs`) are unit-tested without a
broker or a network. Also which event types are posted at all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from router.logs import mask_email, mask_name

# What gets posted; `sla.met` is deliberately skipped (the rep did the job: no alert needed).
ASSIGNMENT_TYPES = frozenset({"lead.assigned", "lead.reassigned", "lead.queued"})
SLA_ALERT_TYPES = frozenset({"sla.warning", "sla.breached"})
POSTED_TYPES = ASSIGNMENT_TYPES | SLA_ALERT_TYPES
SKIPPED_TYPES = frozenset({"sla.met"})

MAX_TRACE_ENTRIES = 8
MAX_TALKING_POINTS = 5


def _str(value: Any) -> str | None:
    """A non-empty string field, or None for anything else (the input is untrusted JSON)."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _esc(text: str) -> str:
    """Escape Slack mrkdwn control characters: `<!channel>` or `<http://x|y>` in a company
    name must render as text, not ping a channel or hide a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed


def _when_text(value: Any) -> str:
    """Plain-text time (UTC) for the `text` fallback."""
    parsed = _parse_time(value)
    if parsed is None:
        return _str(value) or "?"
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _when_mrkdwn(value: Any) -> str:
    """Slack date token: every reader sees the time in their own time zone; other clients show
    the UTC fallback after the `|`."""
    parsed = _parse_time(value)
    if parsed is None:
        return _esc(_str(value) or "?")
    return (f"<!date^{int(parsed.timestamp())}^{{date_short_pretty}} {{time_secs}}"
            f"|{_when_text(value)}>")


def handover_summary(transition: dict[str, Any]) -> dict[str, Any] | None:
    """The part of a `lead.sql` handover packet a rep needs in a chat message, already masked.

    Returns None for anything that is not a `lead.sql` with a handover. The summary is what the
    notifier keeps in memory (bounded) until the lead's assignment arrives: never the full email
    or name of the lead."""
    if not isinstance(transition, dict) or transition.get("type") != "lead.sql":
        return None
    h = transition.get("handover")
    if not isinstance(h, dict):
        return None
    profile = _dict(h.get("profile"))
    company = _dict(profile.get("company"))
    points = _list(h.get("talking_points"))
    signals = _list(h.get("intent_signals"))
    intent = [t for t in (_str(s.get("type")) for s in signals if isinstance(s, dict)) if t]
    score = h.get("score", transition.get("score"))
    return {
        "lead_id": _str(transition.get("lead_id")),
        "cycle": transition.get("cycle"),
        "path": _str(transition.get("path")),
        "score": score if isinstance(score, int) and not isinstance(score, bool) else None,
        "sla_class": _str(h.get("sla_class")),
        "name": mask_name(_str(profile.get("name"))),
        "email": mask_email(_str(profile.get("email"))),
        "title": _str(profile.get("title")),
        "seniority": _str(profile.get("seniority")),
        "buying_role": _str(profile.get("buying_role")),
        "country": _str(profile.get("country")),
        "language": _str(profile.get("language")),
        "company": _str(company.get("name")),
        "industry": _str(company.get("industry")),
        "employees": _str(company.get("employees")),
        "talking_points": [p for p in (_str(x) for x in points) if p][:MAX_TALKING_POINTS],
        "intent_signals": list(dict.fromkeys(intent))[-3:],
    }


def _who(h: dict[str, Any]) -> str | None:
    """`A. R., Director of Marketing @ Acme (saas, 420 employees, ES)` from a summary."""
    person = ", ".join(p for p in (h.get("name"), h.get("title")) if p)
    org_bits = [b for b in (h.get("industry"),
                            f"{h['employees']} employees" if h.get("employees") else None,
                            h.get("country")) if b]
    org = h.get("company") or ""
    if org_bits:
        org = f"{org} ({', '.join(org_bits)})".strip()
    if person and org:
        return f"{person} @ {org}"
    return person or org or None


def _trace_lines(trace: Any) -> list[str]:
    """One short line per routing step; every `chosen` step is kept, the skips are cut after
    MAX_TRACE_ENTRIES (with a count of the rest)."""
    lines: list[tuple[bool, str]] = []
    for entry in _list(trace):
        if not isinstance(entry, dict):
            continue
        rep = _str(entry.get("rep_id"))
        detail = _str(entry.get("detail"))
        chosen = _str(entry.get("chosen"))
        skipped = _str(entry.get("skipped"))
        if chosen:
            line = f"{rep or '?'} chosen ({chosen})"
        elif skipped:
            line = f"{rep or '?'} skipped: {skipped}"
        else:
            line = rep or ""
        if detail:
            line = f"{line} ({detail})" if line else detail
        if line:
            lines.append((bool(chosen), _clip(line, 160)))
    out: list[str] = []
    dropped = 0
    for chosen_line, line in lines:
        if chosen_line or len(out) < MAX_TRACE_ENTRIES:
            out.append(line)
        else:
            dropped += 1
    if dropped:
        out.append(f"+{dropped} more")
    return out


def _field(label: str, value: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": _clip(f"*{label}*\n{value}", 2000)}


def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": _clip(text, 150),
                                       "emoji": True}}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, 3000)}}


def _context(*texts: str) -> dict[str, Any]:
    return {"type": "context",
            "elements": [{"type": "mrkdwn", "text": _clip(t, 2000)} for t in texts if t][:10]}


def _assignment_message(event: dict[str, Any], handover: dict[str, Any] | None
                        ) -> dict[str, Any]:
    kind = event.get("type")
    lead = _str(event.get("lead_id")) or "?"
    rep = _str(event.get("rep_id"))
    pool = _str(event.get("pool")) or "?"
    rule = _str(event.get("rule"))
    cycle = _str(event.get("cycle"))
    sla = _dict(event.get("sla"))
    sla_class = _str(sla.get("class")) or "?"
    due = sla.get("due_at")
    trace = _trace_lines(event.get("trace"))

    if kind == "lead.queued":
        title = f"Lead {lead} queued in pool {pool}: no eligible rep"
        text = (f"{title}. The SLA clock is running: first touch due by {_when_text(due)}"
                f" ({sla_class}).")
    else:
        verb = "SQL reassigned to" if kind == "lead.reassigned" else "New SQL for"
        title = f"{verb} rep {rep or '?'}"
        text = (f"{title}: lead {lead} (pool {pool}, rule {rule or '?'}); first touch due by"
                f" {_when_text(due)} ({sla_class}).")

    summary_lines: list[str] = [f"*Lead* `{_esc(lead)}`" + (f" · cycle {cycle}" if cycle else "")]
    if handover:
        score = handover.get("score")
        bits = [f"score *{score}*" if score is not None else None, handover.get("path")]
        head = " · ".join(_esc(str(b)) for b in bits if b)
        if head:
            summary_lines[0] += f" · {head}"
        who = _who(handover)
        if who:
            summary_lines.append(f"*Who* {_esc(who)}")
            text += f" Who: {who}."
        if handover.get("email"):
            summary_lines.append(f"*Email* {_esc(handover['email'])}")
        if handover.get("intent_signals"):
            summary_lines.append("*Intent* " + _esc(", ".join(handover["intent_signals"])))
        if handover.get("talking_points"):
            points = ", ".join(handover["talking_points"])
            summary_lines.append(f"*Talk about* {_esc(points)}")
            text += f" Talk about: {points}."
        if score is not None:
            text += f" Score {score}."

    fields = [
        _field("Rep", _esc(rep) if rep else "_none yet_"),
        _field("Pool", _esc(pool)),
        _field("Rule", _esc(rule) if rule else "_queued_"),
        _field("SLA", _esc(sla_class.replace("_", " "))),
        _field("First touch due", _when_mrkdwn(due)),
    ]
    blocks: list[dict[str, Any]] = [
        _header(title),
        _section("\n".join(summary_lines)),
        {"type": "section", "fields": fields},
    ]
    context = []
    if trace:
        context.append("Routing: " + _esc("; ".join(trace)))
    event_id = _str(event.get("event_id"))
    if event_id:
        context.append(f"event `{_esc(event_id)}`")
    if context:
        blocks.append(_context(*context))
    return {"text": _clip(_esc(text), 3000), "blocks": blocks}


def _sla_message(event: dict[str, Any]) -> dict[str, Any]:
    kind = event.get("type")
    lead = _str(event.get("lead_id")) or "?"
    rep = _str(event.get("rep_id"))
    pool = _str(event.get("pool")) or "?"
    sla_class = _str(event.get("sla_class")) or "?"
    due = event.get("due_at")
    detail = _str(event.get("detail"))
    reassigned = _str(event.get("reassigned_to"))
    holder = f"rep {rep}" if rep else f"nobody (queued in pool {pool})"

    if kind == "sla.warning":
        title = f":warning: SLA warning: lead {lead}"
        text = (f"SLA warning: lead {lead} has no first touch yet from {holder}; due by"
                f" {_when_text(due)} ({sla_class}, pool {pool}).")
    else:
        title = f":rotating_light: SLA breached: lead {lead}"
        text = (f"SLA breached: lead {lead} got no first touch from {holder} by"
                f" {_when_text(due)} ({sla_class}, pool {pool}).")
        if reassigned:
            text += f" Reassigned to rep {reassigned}."
    if detail:
        text += f" Router: {detail}."

    fields = [
        _field("Lead", f"`{_esc(lead)}`"),
        _field("Rep", _esc(rep) if rep else "_nobody (queued)_"),
        _field("Due", _when_mrkdwn(due)),
        _field("SLA", f"{_esc(sla_class.replace('_', ' '))}, pool {_esc(pool)}"),
    ]
    if reassigned:
        fields.append(_field("Reassigned to", _esc(reassigned)))
    blocks: list[dict[str, Any]] = [_header(title), {"type": "section", "fields": fields}]
    context = []
    if detail:
        context.append(_esc(detail))
    event_id = _str(event.get("event_id"))
    if event_id:
        context.append(f"event `{_esc(event_id)}`")
    if context:
        blocks.append(_context(*context))
    plain = text.replace(":warning: ", "").replace(":rotating_light: ", "")
    return {"text": _clip(_esc(plain), 3000), "blocks": blocks}


def format_message(event: dict[str, Any], handover: dict[str, Any] | None = None
                   ) -> dict[str, Any] | None:
    """The Slack-compatible message for one `leads.assignments` / `leads.sla` event, or None
    when the event is not posted (`sla.met`, an unknown type, not an object).

    `handover` is an optional `handover_summary` of the lead's `lead.sql` (same lead and
    cycle); without it an assignment message carries only what the assignment event holds
    (rep, pool, rule, SLA, routing trace). Untrusted text is escaped for mrkdwn and clipped to
    Slack's block limits; `text` is always set (the fallback for notifications and clients
    that do not render blocks)."""
    if not isinstance(event, dict):
        return None
    kind = event.get("type")
    if kind in ASSIGNMENT_TYPES:
        return _assignment_message(event, handover)
    if kind in SLA_ALERT_TYPES:
        return _sla_message(event)
    return None

