"""router.notify.delivery: the retry policy (classification, backoff schedule, Retry-After),
the webhook URL's validation and redaction, and the webhook poster against a local HTTP server
on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from router.notify.delivery import (
    Outcome,
    WebhookPoster,
    backoff_delay,
    classify_status,
    parse_retry_after,
    redact_url,
    retry_delay,
    validate_webhook_url,
)
from tests.unit.notify_events import NOW

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


