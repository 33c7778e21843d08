"""router.notify.format without Kafka: the Slack-compatible messages for assignments and SLA
alerts, the masked handover summary, escaping of untrusted text, and Slack's block limits."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from router.notify.format import POSTED_TYPES, format_message, handover_summary
from tests.unit.notify_events import (
    DUE,
    EMAIL,
    NAME,
    assignment,
    sla_event,
    sql_transition,
    step,
)


def check_slack_shape(message: dict[str, Any]) -> None:
    """The limits Slack enforces on an incoming-webhook payload."""
    assert isinstance(message["text"], str) and message["text"]
    assert 0 < len(message["blocks"]) <= 50
    for block in message["blocks"]:
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text" and len(block["text"]["text"]) <= 150
        elif block["type"] == "section":
            if "text" in block:
                assert len(block["text"]["text"]) <= 3000
            for f in block.get("fields", []):
                assert f["type"] == "mrkdwn" and len(f["text"]) <= 2000
            assert len(block.get("fields", [])) <= 10
        else:
            assert block["type"] == "context"
            assert 0 < len(block["elements"]) <= 10
    orjson.dumps(message)


def test_assigned_message_names_rep_lead_due_time_and_routing_trace() -> None:
    message = format_message(assignment())
    assert message is not None
    check_slack_shape(message)
    assert message["text"].startswith("New SQL for rep R-07: lead L-1001")
    assert "2026-11-22 10:05:00 UTC" in message["text"] and "high_intent" in message["text"]
    assert message["blocks"][0]["text"]["text"] == "New SQL for rep R-07"
    dump = orjson.dumps(message).decode()
    # Slack date token, with the UTC fallback
    assert f"<!date^{int(DUE.timestamp())}^" in dump
    assert "R-04 skipped: at_capacity (30/30 open)" in dump
    assert "R-07 chosen (round_robin)" in dump
    assert "L-1001:c1:assign:1" in dump


def test_assigned_message_with_handover_is_masked() -> None:
    summary = handover_summary(sql_transition())
    assert summary is not None
    assert summary["name"] == "A. R." and summary["email"] == "a***@acme.io"
    message = format_message(assignment(), summary)
    assert message is not None
    check_slack_shape(message)
    dump = orjson.dumps(message).decode()
    for secret in (EMAIL, NAME, "Ruiz", "ana.ruiz"):
        assert secret not in dump
    assert "A. R., Director of Marketing @ Acme (saas, 420 employees, ES)" in message["text"]
    assert "Talk about: data quality, pricing" in message["text"]
    assert "Score 87" in message["text"]
    assert "a***@acme.io" in dump and "demo_request" in dump and "score *87*" in dump


def test_the_summary_itself_never_holds_the_full_email_or_name() -> None:
    summary = handover_summary(sql_transition())
    dump = orjson.dumps(summary).decode()
    assert EMAIL not in dump and NAME not in dump and "Ruiz" not in dump


def test_handover_summary_only_for_lead_sql() -> None:
    mql = {**sql_transition(), "type": "lead.mql", "handover": None}
    assert handover_summary(mql) is None
    assert handover_summary({**sql_transition(), "handover": None}) is None
    assert handover_summary({"type": "lead.sql", "handover": "nope"}) is None


def test_reassigned_and_queued_messages() -> None:
    re = format_message(assignment("lead.reassigned", rep="R-09", rule="reassign_after_breach"))
    assert re is not None
    check_slack_shape(re)
    assert re["text"].startswith("SQL reassigned to rep R-09: lead L-1001")
    queued = format_message(assignment(
        "lead.queued", rep=None, rule=None,
        trace=[step(rep_id="R-04", skipped="at_capacity", detail="30/30 open")]))
    assert queued is not None
    check_slack_shape(queued)
    assert queued["text"].startswith("Lead L-1001 queued in pool EMEA-MM: no eligible rep")
    assert "2026-11-22 10:05:00 UTC" in queued["text"]


def test_sla_warning_and_breach_messages() -> None:
    warning = format_message(sla_event("sla.warning"))
    assert warning is not None
    check_slack_shape(warning)
    assert warning["text"] == (
        "SLA warning: lead L-1001 has no first touch yet from rep R-07; due by"
        " 2026-11-22 10:05:00 UTC (high_intent, pool EMEA-MM).")
    assert ":warning:" in warning["blocks"][0]["text"]["text"]

    breach = format_message(sla_event(
        "sla.breached", reassigned_to="R-09", detail="no first touch by R-07; reassigned to R-09"))
    assert breach is not None
    check_slack_shape(breach)
    assert breach["text"].startswith(
        "SLA breached: lead L-1001 got no first touch from rep R-07 by 2026-11-22 10:05:00 UTC")
    assert "Reassigned to rep R-09." in breach["text"]
    assert "L-1001:c1:sla.breached" in orjson.dumps(breach).decode()

    queued_breach = format_message(sla_event("sla.breached", rep=None))
    assert queued_breach is not None
    assert "nobody (queued in pool EMEA-MM)" in queued_breach["text"]


def test_sla_met_unknown_types_and_non_objects_are_not_posted() -> None:
    assert format_message(sla_event("sla.met", response_seconds=42.0)) is None
    assert format_message({"type": "lead.teleported", "lead_id": "L-1"}) is None
    assert format_message({}) is None
    assert format_message([1, 2]) is None  # type: ignore[arg-type]
    assert format_message(sql_transition()) is None  # transitions only feed the handover


def test_untrusted_text_cannot_ping_channels_or_forge_links() -> None:
    summary = handover_summary(sql_transition(company="<!channel> & <https://evil|Acme>"))
    message = format_message(assignment(), summary)
    assert message is not None
    dump = orjson.dumps(message).decode()
    assert "<!channel>" not in dump and "<https://evil" not in dump
    assert "&lt;!channel&gt; &amp; &lt;https://evil|Acme&gt;" in dump
    assert "&lt;!channel&gt;" in message["text"]


def test_long_trace_and_long_values_stay_within_slack_limits() -> None:
    trace = [step(rep_id=f"R-{i:03}", skipped="at_capacity", detail="x" * 300)
             for i in range(40)]
    message = format_message(assignment(trace=[*trace, step(rep_id="R-07",
                                                            chosen="round_robin")]))
    assert message is not None
    check_slack_shape(message)
    dump = orjson.dumps(message).decode()
    assert "+32 more" in dump and "R-07 chosen (round_robin)" in dump


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(POSTED_TYPES)),
    extra=st.dictionaries(
        st.sampled_from(["lead_id", "rep_id", "pool", "rule", "cycle", "sla", "trace", "due_at",
                         "detail", "reassigned_to", "event_id", "sla_class"]),
        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=8)),
    handover=st.none() | st.dictionaries(st.text(max_size=10), st.text(max_size=10) | st.none()),
)
def test_malformed_events_never_crash_the_formatter(
    kind: str, extra: dict[str, Any], handover: dict[str, Any] | None
) -> None:
    message = format_message({"type": kind, **extra}, handover)
    assert message is not None
    check_slack_shape(message)

