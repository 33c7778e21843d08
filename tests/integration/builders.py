"""Builders shared by integration test modules: events, reps and waits on real workers.

Builders used by one test module stay in it; the ones several modules use live here, so no
test module imports another (the broker, worker and topic fixtures and the send/collect
helpers are in conftest.py).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from router.adapters.topics import Topics
from tests.integration.conftest import send

NOW = datetime.now(UTC).replace(microsecond=0)


def iso(days: float = 0, seconds: float = 0) -> str:
    return (NOW - timedelta(days=days) + timedelta(seconds=seconds)).isoformat()


# --------------------------------------------------------------------------------------------
# Leads (test_qualification_stream, test_compacted_restore, test_tansu_smoke)
# --------------------------------------------------------------------------------------------

def profile(lead: str, *, seniority: str = "director", role: str = "decision_maker",
            employees: int | None = 420, industry: str | None = "saas",
            domain: str = "acme.io") -> dict[str, Any]:
    """A fit profile (by default a director and decision maker at a 420-person SaaS firm)."""
    return {"lead_id": lead, "updated_at": iso(days=1), "email": f"{lead}@{domain}",
            "name": "Ana Ruiz", "seniority": seniority, "buying_role": role,
            "language": "es", "country": "ES",
            "company": {"name": "Acme", "domain": domain, "employees": employees,
                        "industry": industry}}


def touch_days_ago(lead: str, n: int, kind: str, days_ago: float, **extra: Any
                   ) -> dict[str, Any]:
    """The lead's touch number n (event id `<lead>-tp<n>`), `days_ago` days before NOW."""
    return {"event_id": f"{lead}-tp{n}", "lead_id": lead, "type": kind,
            "occurred_at": iso(days=days_ago), **extra}


# --------------------------------------------------------------------------------------------
# A state to restore (test_recovery, test_rocksdb_store)
# --------------------------------------------------------------------------------------------

def daily_touch(lead: str, n: int, kind: str) -> dict[str, object]:
    """The lead's touch number n of one a day, the first (n=0) ten days before NOW (event id
    `<lead>-<n>`)."""
    return {"event_id": f"{lead}-{n}", "lead_id": lead, "type": kind,
            "occurred_at": (NOW - timedelta(days=10 - n)).isoformat()}


async def feed_three_touches(producer: AIOKafkaProducer, topics: Topics, leads: list[str]
                             ) -> RecordMetadata:
    """A fit VP profile and three touches per lead (one pricing view): MQL, one pricing view
    and one touch short of SQL. Returns the last record sent."""
    last: RecordMetadata | None = None
    for lead in leads:
        await send(producer, topics.profiles, lead, {
            "lead_id": lead, "updated_at": NOW.isoformat(), "seniority": "vp",
            "company": {"employees": 500, "industry": "saas"}})
        for n, kind in enumerate(["page_view", "pricing_page_view", "page_view"]):
            # repeated updates of the same keys: many changelog records per lead
            last = await send(producer, topics.touchpoints, lead, daily_touch(lead, n, kind))
    assert last is not None
    return last


# --------------------------------------------------------------------------------------------
# Reps and workers (test_routing_two_workers, test_exactly_once, test_inspection)
# --------------------------------------------------------------------------------------------

REP_CAPACITY = 5


def rep(rep_id: str, **extra: Any) -> dict[str, Any]:
    """An EMEA rep speaking German and English, REP_CAPACITY open leads at most."""
    return {"rep_id": rep_id, "pools": ["EMEA"], "languages": ["de", "en"],
            "max_open_leads": REP_CAPACITY, "timezone": "Europe/Berlin", **extra}


async def wait_ready_with_roster(workers: list[Any], reps: int, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        bodies = [w.get("/ready")[1] for w in workers]
        if all(b["ready"] and b["reps"] >= reps for b in bodies):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"workers not ready with {reps} reps: {bodies}")
