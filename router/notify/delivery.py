"""Sending one message to the webhook: the retry policy (which statuses are retried, the
backoff schedule with jitter, `Retry-After`) as pure functions, and `WebhookPoster`, which
posts until the message is delivered, refused for good, retries run out, or it is told to stop
or abandon. Also the webhook URL's validation and redaction: the URL is a secret.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

if TYPE_CHECKING:  # aiohttp is imported where used: `leadrouter --help` stays fast
    import aiohttp

log = logging.getLogger("router.notify")

RETRY_AFTER_CAP_SECONDS = 600.0


# --------------------------------------------------------------------------------------------
# Retry policy (pure)
# --------------------------------------------------------------------------------------------


class Outcome(StrEnum):
    DELIVERED = "delivered"  # 2xx
    RETRY = "retry"  # connection error, timeout, 408, 429, 5xx
    PERMANENT = "permanent"  # any other status: this message will never be accepted


def classify_status(status: int) -> Outcome:
    """2xx delivered; 408 (request timeout), 429 (rate limited) and 5xx retried; any other
    status (400 bad payload, 403/404/410 revoked or archived webhook, unfollowed 3xx) is a
    permanent failure for this message."""
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in (408, 429) or status >= 500:
        return Outcome.RETRY
    return Outcome.PERMANENT


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 30.0,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1 = first retry): exponential
    (base, 2 base, 4 base, ...) capped at `cap`, with "equal jitter": uniformly in
    [ceiling / 2, ceiling], so retries of several notifiers spread out but never hammer."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 60))
    r = rng if rng is not None else random
    return ceiling / 2 + r.uniform(0.0, ceiling / 2)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` in seconds (delta-seconds or an HTTP date); None when absent or invalid."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def retry_delay(attempt: int, retry_after: float | None, *, base: float = 0.5,
                cap: float = 30.0, rng: random.Random | None = None) -> float:
    """The wait before retry `attempt`: the backoff, but never less than what the server asked
    for in `Retry-After` (itself capped at 10 minutes, against absurd values)."""
    delay = backoff_delay(attempt, base=base, cap=cap, rng=rng)
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP_SECONDS))
    return delay


def redact_url(url: str) -> str:
    """`https://hooks.slack.com/services/T0/B0/secret` -> `https://hooks.slack.com/…`: the
    path of an incoming-webhook URL is its credential."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def validate_webhook_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook URL must be http(s)://host/..., got {redact_url(url)!r}")
    return url.strip()



# --------------------------------------------------------------------------------------------
# Posting
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    outcome: Outcome
    status: int | None = None
    retry_after: float | None = None
    error: str | None = None
    body: str = ""


Result = Literal["delivered", "rejected", "gave_up", "stopped", "abandoned"]


@dataclass(frozen=True)
class Delivery:
    result: Result
    attempts: int
    last: Attempt


class WebhookPoster:
    """Posts one message until it is delivered, refused for good, or retries run out."""

    def __init__(self, session: aiohttp.ClientSession, url: str, *, max_retries: int = 0,
                 backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 stop: asyncio.Event | None = None, rng: random.Random | None = None) -> None:
        self._session = session
        self._url = url
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._stop = stop if stop is not None else asyncio.Event()
        self._rng = rng if rng is not None else random.Random()

    async def attempt(self, body: bytes) -> Attempt:
        import aiohttp

        try:
            async with self._session.post(
                self._url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                text = (await resp.content.read(300)).decode("utf-8", "replace")
                return Attempt(classify_status(resp.status), resp.status,
                               parse_retry_after(resp.headers.get("Retry-After")), None, text)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # the message of an aiohttp error can carry the URL: keep only the class
            return Attempt(Outcome.RETRY, error=type(exc).__name__)

    async def _wait(self, seconds: float) -> bool:
        """Sleep, unless asked to stop first (returns False then)."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def deliver(self, body: bytes, abort: Callable[[], bool] = lambda: False,
                      context: dict[str, Any] | None = None) -> Delivery:
        ctx = context or {}
        attempts = 0
        while True:
            attempts += 1
            last = await self.attempt(body)
            if last.outcome is Outcome.DELIVERED:
                return Delivery("delivered", attempts, last)
            if last.outcome is Outcome.PERMANENT:
                return Delivery("rejected", attempts, last)
            if self.max_retries and attempts > self.max_retries:
                return Delivery("gave_up", attempts, last)
            delay = retry_delay(attempts, last.retry_after, base=self.backoff_base,
                                cap=self.backoff_cap, rng=self._rng)
            log.warning("webhook post failed, retrying", extra={
                **ctx, "attempt": attempts, "status": last.status, "error": last.error,
                "retry_after": last.retry_after, "retry_in_seconds": round(delay, 3)})
            if abort():
                return Delivery("abandoned", attempts, last)
            if not await self._wait(delay):
                return Delivery("stopped", attempts, last)
            if abort():
                return Delivery("abandoned", attempts, last)

