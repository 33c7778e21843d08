"""Events produced with a plain aiokafka producer come out as lead.mql / lead.sql on the real
embedded broker, through the real `leadrouter worker` process."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from router.adapters.topics import Topics
from router.harness.brokers import LocalBroker
from router.harness.workers import WorkerProcess
from tests.integration.builders import profile, touch_days_ago
from tests.integration.conftest import collect, send, wait_processed


async def wait_for_named_accounts(worker: WorkerProcess, count: int, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        _, body = worker.get("/ready")
        if body["named_accounts"] >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"worker did not load {count} named accounts: {body}")


async def test_standard_direct_abm_and_not_fit(
    worker: WorkerProcess, broker: LocalBroker, producer: AIOKafkaProducer, topics: Topics,
    prefix: str,
) -> None:
    # ABM needs the named-account list: published while the worker runs, read live.
    await send(producer, topics.accounts, "bigco.com",
               {"account_domain": "bigco.com", "owner_rep_id": "R-03"})
    await wait_for_named_accounts(worker, 1)

    # standard: MQL at the 2nd touch (intent present), SQL at the 4th with 2 pricing views
    await send(producer, topics.profiles, "L-std", profile("L-std"))
    for n, kind in enumerate(["page_view", "pricing_page_view", "email_click",
                              "pricing_page_view"]):
        await send(producer, topics.touchpoints, "L-std", touch_days_ago("L-std", n, kind, 5 - n))

    # direct: one demo request from a fit decision maker, no MQL first
    await send(producer, topics.profiles, "L-dir", profile("L-dir"))
    await send(producer, topics.touchpoints, "L-dir", touch_days_ago("L-dir", 0, "demo_request", 0))

    # ABM: a 15,000-employee manufacturer (not fit) on a named account, with SQL intent
    await send(producer, topics.profiles, "L-abm",
               profile("L-abm", employees=15000, industry="manufacturing", domain="bigco.com"))
    for n, kind in enumerate(["page_view", "pricing_page_view", "pricing_page_view"]):
        await send(producer, topics.touchpoints, "L-abm",
                   touch_days_ago("L-abm", n, kind, 3 - n, account_domain="bigco.com"))

    # not fit: same behaviour as L-dir, but a 10-person retailer -> nothing
    await send(producer, topics.profiles, "L-nofit",
               profile("L-nofit", employees=10, industry="retail", domain="tiny.example"))
    await send(producer, topics.touchpoints, "L-nofit",
               touch_days_ago("L-nofit", 0, "demo_request", 0))

    # profile after touchpoints: re-evaluated at once when the profile arrives. Two topics
    # have no order between them, so wait until the touchpoints are processed first.
    for n, kind in enumerate(["page_view", "product_page_view"]):
        last = await send(producer, topics.touchpoints, "L-late",
                          touch_days_ago("L-late", n, kind, 2 - n))
    await wait_processed(broker, f"{prefix}leadrouter", last)
    await send(producer, topics.profiles, "L-late",
               profile("L-late", seniority="manager", role="influencer"))

    expected = {
        ("L-std", "lead.mql", "standard"),
        ("L-std", "lead.sql", "standard"),
        ("L-dir", "lead.sql", "direct"),
        ("L-abm", "lead.mql", "abm"),
        ("L-abm", "lead.sql", "abm"),
        ("L-late", "lead.mql", "standard"),
    }
    got = await collect(
        broker, topics.transitions,
        until=lambda rs: {(r["lead_id"], r["type"], r["path"]) for r in rs} >= expected,
        timeout=40, settle=2.0,
    )
    assert {(r["lead_id"], r["type"], r["path"]) for r in got} == expected
    by_id = {r["event_id"]: r for r in got}
    assert set(by_id) == {"L-std:c1:mql", "L-std:c1:sql", "L-dir:c1:sql", "L-abm:c1:mql",
                          "L-abm:c1:sql", "L-late:c1:mql"}
    sql = by_id["L-std:c1:sql"]
    assert sql["_key"] == "L-std"
    assert sql["triggered_by"] == "L-std-tp3"
    assert sql["from_stage"] == "mql" and sql["to_stage"] == "sql"
    assert sql["handover"]["sla_class"] == "behavioural"
    assert sql["handover"]["profile"]["email"] == "L-std@acme.io"
    assert sql["criteria"]["intent"]["pricing_views_within_pair_window"] == 2
    assert sql["rules_version"].startswith("default@")
    assert by_id["L-dir:c1:sql"]["handover"]["sla_class"] == "high_intent"
    assert by_id["L-dir:c1:sql"]["from_stage"] == "new"
    assert by_id["L-abm:c1:sql"]["criteria"]["fit"]["named_account"] == "bigco.com"
    assert by_id["L-late:c1:mql"]["triggered_by"].startswith("profile@")


async def test_duplicates_and_out_of_order_on_the_stream(
    worker: WorkerProcess, broker: LocalBroker, producer: AIOKafkaProducer, topics: Topics,
    prefix: str,
) -> None:
    """Three distinct touches sent six times, newest first: still no SQL (needs 4)."""
    lead = "L-dup"
    await send(producer, topics.profiles, lead, profile(lead))
    events = [touch_days_ago(lead, n, kind, 3 - n)
              for n, kind in enumerate(["page_view", "pricing_page_view", "page_view"])]
    for _ in range(2):
        for event in reversed(events):
            last = await send(producer, topics.touchpoints, lead, event)
    await wait_processed(broker, f"{prefix}leadrouter", last)
    got = await collect(broker, topics.transitions,
                        until=lambda rs: any(r["lead_id"] == lead for r in rs), timeout=30,
                        settle=1.0)
    mine = [r for r in got if r["lead_id"] == lead]
    assert [r["type"] for r in mine] == ["lead.mql"]  # 3 distinct touches: MQL, not SQL
    assert mine[0]["criteria"]["engagement"]["touchpoints_in_window"] == 2  # at the crossing

    # the 4th distinct touch (older than the others, still inside 30 days) makes it SQL
    await send(producer, topics.touchpoints, lead,
               touch_days_ago(lead, 9, "pricing_page_view", 20))
    await send(producer, topics.touchpoints, lead,
               touch_days_ago(lead, 10, "pricing_page_view", 2.5))
    got = await collect(broker, topics.transitions,
                        until=lambda rs: any(r["event_id"] == f"{lead}:c1:sql" for r in rs),
                        timeout=30)
    sql = [r for r in got if r["event_id"] == f"{lead}:c1:sql"]
    assert len(sql) == 1
    assert sql[0]["criteria"]["engagement"]["touchpoints_in_window"] == 5
