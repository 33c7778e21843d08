"""Lead and rep inspection over HTTP on two real workers: any worker answers for any lead (it
asks the owners of the lead's partition and of the routing partition), the views match what
the topics say, `leadrouter lead show` prints them, and after a worker is SIGKILLed and
restarted the views rebuilt from the changelogs are identical to the ones before the crash."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from router.adapters.topics import Topics
from router.harness.brokers import LocalBroker
from router.harness.workers import WorkerProcess
from tests.integration.builders import wait_ready_with_roster
from tests.integration.conftest import collect, new_prefix, send, start_worker

NOW = datetime.now(UTC).replace(microsecond=0)
SQL_LEADS = [f"L-insp-sql{i}" for i in range(8)]
MQL_LEAD = "L-insp-mql"
REPS = ["R-1", "R-2", "R-3"]


def rep(rep_id: str) -> dict[str, Any]:
    return {"rep_id": rep_id, "pools": ["NA"], "languages": ["en"], "max_open_leads": 5,
            "timezone": "America/New_York"}


def profile(lead: str) -> dict[str, Any]:
    return {"lead_id": lead, "updated_at": NOW.isoformat(), "seniority": "vp",
            "buying_role": "decision_maker", "country": "US", "language": "en",
            "email": f"{lead.lower()}@example.com", "first_name": "Zephyrine",
            "last_name": "Quillworth",
            "company": {"employees": 300, "industry": "saas", "domain": "example.com"}}


def touch(lead: str, kind: str, n: int) -> dict[str, Any]:
    return {"event_id": f"{lead}-{kind}-{n}", "lead_id": lead, "type": kind,
            "occurred_at": NOW.isoformat()}


async def view(worker: WorkerProcess, path: str, timeout: float = 20.0) -> Any:
    """GET a view, retrying while a rebalance makes an owner unknown (HTTP 503)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = await asyncio.to_thread(worker.get, path, 5.0)
        if status == 200:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} on {worker.base_url}: HTTP {status} {body}")
        await asyncio.sleep(0.3)


def lead_path(lead: str) -> str:
    return "/leads/" + urllib.parse.quote(lead, safe="")


async def snapshot(worker: WorkerProcess) -> dict[str, Any]:
    leads = {lead: await view(worker, lead_path(lead)) for lead in [*SQL_LEADS, MQL_LEAD]}
    reps = await view(worker, "/reps")
    reps.pop("at")
    return {"leads": leads, "reps": reps}


async def test_any_worker_answers_for_any_lead_and_views_survive_a_crash(
    broker: LocalBroker, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    workers = [start_worker(broker, prefix, tmp_path), start_worker(broker, prefix, tmp_path)]
    try:
        for r in REPS:
            await send(producer, topics.reps, r, rep(r))
        await wait_ready_with_roster(workers, len(REPS))
        for lead in [*SQL_LEADS, MQL_LEAD]:
            await send(producer, topics.profiles, lead, profile(lead))
        for lead in SQL_LEADS:
            await send(producer, topics.touchpoints, lead, touch(lead, "demo_request", 1))
        for n, kind in enumerate(["product_page_view", "email_click", "content_download"]):
            await send(producer, topics.touchpoints, MQL_LEAD, touch(MQL_LEAD, kind, n))

        assignments = await collect(
            broker, topics.assignments,
            until=lambda rs: {r["lead_id"] for r in rs} >= set(SQL_LEADS), timeout=60)
        holder = {a["lead_id"]: a["rep_id"] for a in assignments if a["type"] == "lead.assigned"}
        assert set(holder) == set(SQL_LEADS)
        await collect(broker, topics.transitions,
                      until=lambda rs: any(r["lead_id"] == MQL_LEAD for r in rs), timeout=30)

        # the group is really split: each worker owns only some lead partitions
        owned = [w.get("/ready")[1]["partitions_assigned"] for w in workers]
        assert all(n > 0 for n in owned), owned

        before = [await snapshot(w) for w in workers]
        assert before[0] == before[1], "two workers gave different views of the same leads"
        leads = before[0]["leads"]
        for lead in SQL_LEADS:
            v = leads[lead]
            assert v["known"] is True
            assert v["qualification"]["stage"] == "sql"
            assert v["routing"]["status"] == "assigned"
            assert v["routing"]["rep_id"] == holder[lead]
            assert v["routing"]["sla"]["state"] == "running"
        mql = leads[MQL_LEAD]
        assert mql["qualification"]["stage"] == "mql"
        assert mql["qualification"]["criteria"]["engagement"]["summary"] == \
            "engagement 3/4 in 30 days"
        assert mql["routing"] is None
        unknown = await view(workers[1], lead_path("L-never-seen"))
        assert unknown["known"] is False

        reps = {r["rep_id"]: r for r in before[0]["reps"]["reps"]}
        assert sum(r["open_leads"] for r in reps.values()) == len(SQL_LEADS)
        for lead, rep_id in holder.items():
            assert lead in reps[rep_id]["open_lead_ids"]
        assert "zephyrine" not in str(before[0]).lower()
        assert "quillworth" not in str(before[0]).lower()
        assert "l-insp-sql0@" not in str(before[0]).lower()

        # the CLI renders the same view
        out = subprocess.run(
            [sys.executable, "-m", "router", "lead", "show", MQL_LEAD,
             "--worker", workers[0].base_url],
            capture_output=True, text=True, timeout=30, check=True).stdout
        assert "stage MQL" in out
        assert "engagement 3/4 in 30 days" in out
        out = subprocess.run(
            [sys.executable, "-m", "router", "reps", "--worker", workers[1].base_url],
            capture_output=True, text=True, timeout=30, check=True).stdout
        assert all(r in out for r in REPS)

        # crash one worker; its partitions (and maybe the routing partition) move, get
        # restored from the changelogs, and move back when it restarts
        workers[1].kill()
        workers[1] = start_worker(broker, prefix, tmp_path)
        await wait_ready_with_roster(workers, len(REPS), timeout=60)
        after = [await snapshot(w) for w in workers]
        assert after[0] == before[0]
        assert after[1] == before[0]
    finally:
        for w in workers:
            w.stop()
