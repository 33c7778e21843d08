"""The reference notifier without Kafka: message formatting and masking, the retry policy
(classification, backoff schedule, Retry-After), and the webhook poster against a local HTTP
server on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from router.cli import build_parser
from router.domain.events import Assignment, SlaEvent, TraceEntry, Transition
from router.notify import (
    POSTED_TYPES,
    LruCache,
    NotifyConfig,
    Outcome,
    RecentIds,
    WebhookPoster,
    backoff_delay,
    classify_status,
    config_from_args,
    decode_event,
    format_message,
    handover_summary,
    parse_retry_after,
    redact_url,
    retry_delay,
    validate_webhook_url,
)

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


# --------------------------------------------------------------------------------------------
# Formatting and masking
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Retry policy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "outcome"), [
    (200, Outcome.DELIVERED), (201, Outcome.DELIVERED), (204, Outcome.DELIVERED),
    (408, Outcome.RETRY), (429, Outcome.RETRY), (500, Outcome.RETRY), (502, Outcome.RETRY),
    (503, Outcome.RETRY), (504, Outcome.RETRY),
    (400, Outcome.PERMANENT), (401, Outcome.PERMANENT), (403, Outcome.PERMANENT),
    (404, Outcome.PERMANENT), (410, Outcome.PERMANENT), (413, Outcome.PERMANENT),
    (301, Outcome.PERMANENT), (304, Outcome.PERMANENT),
])
def test_status_classification(status: int, outcome: Outcome) -> None:
    assert classify_status(status) is outcome


def test_backoff_is_exponential_capped_and_jittered() -> None:
    rng = random.Random(7)
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    for attempt, ceiling in enumerate(ceilings, start=1):
        delays = [backoff_delay(attempt, base=0.5, cap=30.0, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, min(delays))
        assert len(set(delays)) > 100  # jittered, not a fixed schedule
    assert backoff_delay(10_000, base=0.5, cap=30.0) <= 30.0  # no overflow on long outages
    with pytest.raises(ValueError):
        backoff_delay(0)


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    date = format_datetime(NOW + timedelta(seconds=120), usegmt=True)
    assert parse_retry_after(date, now=NOW) == pytest.approx(120.0)
    assert parse_retry_after(format_datetime(NOW - timedelta(seconds=9), usegmt=True),
                             now=NOW) == 0.0


def test_retry_delay_waits_at_least_retry_after_but_not_forever() -> None:
    rng = random.Random(1)
    assert retry_delay(1, 20.0, base=0.5, cap=30.0, rng=rng) == 20.0
    assert retry_delay(1, None, base=0.5, cap=30.0, rng=rng) <= 0.5
    assert 15.0 <= retry_delay(7, 0.0, base=0.5, cap=30.0, rng=rng) <= 30.0
    assert retry_delay(1, 1e9, base=0.5, cap=30.0, rng=rng) == 600.0


def test_webhook_url_is_validated_and_redacted() -> None:
    url = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
    assert validate_webhook_url(url) == url
    assert redact_url(url) == "https://hooks.slack.com/…"
    assert redact_url("http://127.0.0.1:8080/x?token=1") == "http://127.0.0.1:8080/…"
    for bad in ("ftp://x/y", "hooks.slack.com/services", "https:///path"):
        with pytest.raises(ValueError) as info:
            validate_webhook_url(bad)
        assert "services" not in str(info.value) or bad == "hooks.slack.com/services"


def test_recent_ids_and_lru_are_bounded() -> None:
    ids = RecentIds(3)
    for i in range(5):
        ids.add(f"e{i}")
    assert len(ids) == 3 and "e0" not in ids and "e1" not in ids and "e4" in ids
    ids.add("e2")  # touched: now the newest
    ids.add("e5")
    assert "e2" in ids and "e3" not in ids
    cache = LruCache(2)
    cache.put("a", {"x": 1})
    cache.put("b", {"x": 2})
    cache.put("c", {"x": 3})
    assert cache.get("a") is None and cache.get("c") == {"x": 3} and len(cache) == 2


def test_decode_event() -> None:
    assert decode_event(b'{"type": "sla.warning"}') == {"type": "sla.warning"}
    for raw, why in ((None, "null"), (b"{oops", "JSON"), (b"[1]", "object"),
                     (b"\xff\xfe", "JSON")):
        with pytest.raises(ValueError, match=why):
            decode_event(raw)


def test_config_from_args_and_cli(tmp_path: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(["notify", "--topic-prefix", "p.", "--max-retries", "3"])
    assert args.func.__name__ == "_cmd_notify"
    with pytest.raises(ValueError, match="webhook URL is needed"):
        config_from_args(args, environ={})
    config = config_from_args(args, environ={"LEADROUTER_NOTIFY_WEBHOOK_URL": "http://h/x",
                                             "LEADROUTER_BROKER": "kafka://b:9093"})
    assert config.webhook_url == "http://h/x" and config.settings.broker == "kafka://b:9093"
    assert config.group_id == "p.leadrouter-notify" and config.max_retries == 3
    assert config.offset_reset == "latest" and config.handover and config.timeout == 10.0
    secret = tmp_path / "url"
    secret.write_text("https://hooks.example/T/B/s\n")
    args = parser.parse_args(["notify", "--webhook-url-file", str(secret), "--group", "g",
                              "--no-handover", "--offset-reset", "earliest"])
    config = config_from_args(args, environ={})
    assert config.webhook_url == "https://hooks.example/T/B/s" and config.group_id == "g"
    assert not config.handover and config.offset_reset == "earliest"
    with pytest.raises(ValueError):
        NotifyConfig(webhook_url="http://h/x", max_retries=-1)
    with pytest.raises(ValueError):
        NotifyConfig(webhook_url="http://h/x", backoff_base=5, backoff_cap=1)


# --------------------------------------------------------------------------------------------
# The poster against a local HTTP server
# --------------------------------------------------------------------------------------------

Responder = Callable[[int], Awaitable[web.StreamResponse]]


class Server:
    """An HTTP server on 127.0.0.1 whose answer to request n (from 1) is `respond(n)`."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.bodies: list[Any] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(orjson.loads(await request.read()))
        return await self.respond(len(self.bodies))

    async def __aenter__(self) -> Server:
        app = web.Application()
        app.router.add_post("/hook/{secret}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook/s3cret"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def status(code: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=code, text="ok" if code < 300 else "nope", headers=headers)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as s:
        yield s


def poster(session: aiohttp.ClientSession, url: str, **kw: Any) -> WebhookPoster:
    return WebhookPoster(session, url, backoff_base=0.01, backoff_cap=0.05,
                         rng=random.Random(3), **kw)


async def test_poster_retries_5xx_and_429_then_delivers(
    session: aiohttp.ClientSession
) -> None:
    answers = {1: 503, 2: 500, 3: 429}

    async def respond(n: int) -> web.Response:
        return await status(answers.get(n, 200), {"Retry-After": "0"} if n == 3 else None)

    async with Server(respond) as server:
        body = orjson.dumps({"text": "hi"})
        delivery = await asyncio.wait_for(poster(session, server.url).deliver(body), 10)
    assert delivery.result == "delivered" and delivery.attempts == 4
    assert server.bodies == [{"text": "hi"}] * 4


async def test_poster_honours_retry_after(session: aiohttp.ClientSession) -> None:
    async def respond(n: int) -> web.Response:
        return await status(429 if n == 1 else 200, {"Retry-After": "1"})

    async with Server(respond) as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        delivery = await asyncio.wait_for(poster(session, server.url).deliver(b"{}"), 10)
        assert delivery.result == "delivered" and delivery.attempts == 2
        assert loop.time() - started >= 0.95  # not the 0.01 s backoff


async def test_poster_4xx_is_permanent_without_retry(session: aiohttp.ClientSession) -> None:
    async def respond(n: int) -> web.Response:
        return await status(400)

    async with Server(respond) as server:
        delivery = await asyncio.wait_for(poster(session, server.url).deliver(b"{}"), 10)
    assert delivery.result == "rejected" and delivery.attempts == 1
    assert delivery.last.status == 400 and delivery.last.body == "nope"


async def test_poster_gives_up_after_max_retries(session: aiohttp.ClientSession) -> None:
    async def respond(n: int) -> web.Response:
        return await status(502)

    async with Server(respond) as server:
        delivery = await asyncio.wait_for(
            poster(session, server.url, max_retries=2).deliver(b"{}"), 10)
        assert delivery.result == "gave_up" and delivery.attempts == 3
        assert len(server.bodies) == 3


async def test_poster_retries_timeouts_and_refused_connections(
    session: aiohttp.ClientSession
) -> None:
    async def respond(n: int) -> web.Response:
        if n == 1:
            await asyncio.sleep(3)  # longer than the 1 s client timeout
        return await status(200)

    async with Server(respond) as server:
        delivery = await asyncio.wait_for(poster(session, server.url).deliver(b"{}"), 10)
    assert delivery.result == "delivered" and delivery.attempts == 2

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    delivery = await asyncio.wait_for(
        poster(session, f"http://127.0.0.1:{port}/hook/x", max_retries=1).deliver(b"{}"), 10)
    assert delivery.result == "gave_up" and delivery.attempts == 2
    assert delivery.last.status is None and delivery.last.error
    assert "hook" not in delivery.last.error  # the error never carries the URL


async def test_stop_interrupts_the_backoff_and_abort_abandons(
    session: aiohttp.ClientSession
) -> None:
    async def respond(n: int) -> web.Response:
        return await status(500)

    async with Server(respond) as server:
        stop = asyncio.Event()
        slow = WebhookPoster(session, server.url, backoff_base=20.0, backoff_cap=30.0, stop=stop)
        task = asyncio.create_task(slow.deliver(b"{}"))
        await asyncio.sleep(0.3)
        stop.set()
        delivery = await asyncio.wait_for(task, 5)
        assert delivery.result == "stopped" and delivery.attempts == 1

        revoked = False

        def abort() -> bool:
            return revoked

        task = asyncio.create_task(poster(session, server.url).deliver(b"{}", abort=abort))
        await asyncio.sleep(0.3)
        revoked = True
        delivery = await asyncio.wait_for(task, 5)
        assert delivery.result == "abandoned" and delivery.attempts > 1


def test_parser_accepts_every_documented_flag() -> None:
    args = build_parser().parse_args([
        "notify", "--webhook-url", "http://127.0.0.1:1/x", "--broker", "kafka://h:1",
        "--topic-prefix", "p.", "--group", "g", "--max-retries", "5", "--timeout", "2.5",
        "--backoff-base", "0.1", "--backoff-cap", "3", "--offset-reset", "earliest",
        "--no-handover", "--max-messages", "10", "--idle-exit-seconds", "4"])
    assert isinstance(args, argparse.Namespace)
    config = config_from_args(args, environ={})
    assert (config.settings.broker, config.settings.topic_prefix) == ("kafka://h:1", "p.")
    assert (config.max_retries, config.timeout, config.backoff_base, config.backoff_cap) == (
        5, 2.5, 0.1, 3.0)
    assert (config.max_messages, config.idle_exit_seconds) == (10, 4.0)


async def test_dispatch_skips_junk_and_logs_each_unknown_type_once(
    caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from router.notify import Notifier

    notifier = Notifier(NotifyConfig(webhook_url="http://127.0.0.1:1/x"))
    topics = notifier.topics

    def record(topic: str, value: Any, offset: int = 0) -> Any:
        raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
        return SimpleNamespace(topic=topic, partition=0, offset=offset, value=raw)

    junk = [
        record(topics.sla, {"type": "lead.teleported"}),
        record(topics.sla, {"type": "lead.teleported"}),
        record(topics.assignments, {"type": "lead.vanished"}),
        record(topics.sla, sla_event("sla.met", response_seconds=1.0)),
        record(topics.assignments, b"{not json"),
        record(topics.assignments, None),  # a tombstone
        record(topics.transitions, sql_transition()),
        record(topics.transitions, {**sql_transition(), "type": "lead.mql", "handover": None}),
    ]
    with caplog.at_level("WARNING", logger="router.notify"):
        for r in junk:  # none of these reaches the poster (None would fail)
            assert await notifier._handle(None, r, None, None) == "skipped"  # type: ignore[arg-type]
    unknown = [r for r in caplog.records if r.getMessage().startswith("unknown event type")]
    assert sorted(r.__dict__["type"] for r in unknown) == ["lead.teleported", "lead.vanished"]
    assert notifier.stats == {"unknown_type": 3, "skipped": 2, "undecodable": 2,
                              "handover_cached": 1}
    assert notifier.subscribed == [topics.assignments, topics.sla, topics.transitions]
    cached = notifier._handovers.get("L-1001:1")
    assert cached is not None and cached["name"] == "A. R."
