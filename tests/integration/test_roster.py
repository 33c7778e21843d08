"""`leadrouter roster apply / export` on a real broker: the compacted topics hold the file,
the export gives it back, a dry run writes nothing, a rep left out becomes a tombstone and
the worker drops it from its roster."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from router.adapters.topics import Topics
from router.harness.brokers import LocalBroker
from router.harness.workers import WorkerProcess
from router.settings import Settings
from router.tools.roster import apply_roster, export_roster, parse_roster
from tests.integration.conftest import new_prefix

pytestmark = pytest.mark.integration

DEMO = (resources.files("router") / "harness/demo_roster.yaml").read_text(encoding="utf-8")


async def latest(broker: LocalBroker, topic: str) -> tuple[dict[str, bytes | None], int]:
    """Latest value per key read straight from the topic (None: tombstone), and how many
    records the topic holds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=100)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[str, bytes | None] = {}
        count = 0
        deadline = time.monotonic() + 20
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"could not read {topic}"
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for r in records:
                    out[r.key.decode()] = r.value
                    count += 1
        return out, count
    finally:
        await consumer.stop()


async def topic_names(broker: LocalBroker) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def settings(broker: LocalBroker, prefix: str) -> Settings:
    return Settings(broker=broker.url, topic_prefix=prefix, broker_wait_seconds=20)


async def test_apply_publishes_the_file_and_export_gives_it_back(
        broker: LocalBroker, prefix: str, topics: Topics, worker: WorkerProcess) -> None:
    roster = parse_roster(DEMO)
    assert roster.reps is not None and roster.accounts is not None
    diff = await apply_roster(settings(broker, prefix), roster, dry_run=False)
    assert diff.counts()["reps"] == {"added": len(roster.reps), "changed": 0, "removed": 0}
    reps, _ = await latest(broker, topics.reps)
    accounts, _ = await latest(broker, topics.accounts)
    raw = yaml.safe_load(DEMO)
    assert sorted(reps) == sorted(r["rep_id"] for r in raw["reps"])
    for rep in raw["reps"]:  # each value is the entry of the file, as JSON
        value = reps[rep["rep_id"]]
        assert value is not None
        assert roster.reps[rep["rep_id"]].model_validate_json(value) == \
            roster.reps[rep["rep_id"]]
    assert sorted(accounts) == sorted(a["account_domain"] for a in raw["named_accounts"])
    exported = await export_roster(settings(broker, prefix))
    assert parse_roster(exported, "export.yaml") == roster
    # the worker routes with it: every rep of the file is on its roster
    deadline = time.monotonic() + 20
    while True:
        status, view = worker.get("/reps")
        on_roster = {r["rep_id"] for r in view["reps"] if r["on_roster"]} if status == 200 \
            else set()
        if on_roster == set(roster.reps) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert on_roster == set(roster.reps)

    # applying the same file again writes nothing
    _, before = await latest(broker, topics.reps)
    again = await apply_roster(settings(broker, prefix), roster, dry_run=False)
    assert again.empty
    _, after = await latest(broker, topics.reps)
    assert after == before


async def test_a_rep_left_out_is_tombstoned_and_leaves_the_workers_roster(
        broker: LocalBroker, prefix: str, topics: Topics, worker: WorkerProcess) -> None:
    await apply_roster(settings(broker, prefix), parse_roster(DEMO), dry_run=False)
    raw = yaml.safe_load(DEMO)
    gone = "R-06"
    raw["reps"] = [r for r in raw["reps"] if r["rep_id"] != gone]
    raw["reps"][0]["max_open_leads"] = 7
    smaller = parse_roster(yaml.safe_dump(raw))
    diff = await apply_roster(settings(broker, prefix), smaller, dry_run=False)
    assert [(c.kind, c.key) for c in diff.reps] == [("changed", raw["reps"][0]["rep_id"]),
                                                   ("removed", gone)]
    reps, _ = await latest(broker, topics.reps)
    assert reps[gone] is None  # a tombstone, not a deactivated rep
    first = reps[raw["reps"][0]["rep_id"]]
    assert first is not None and orjson.loads(first)["max_open_leads"] == 7
    deadline = time.monotonic() + 20
    while True:
        status, view = worker.get("/reps")
        on_roster = {r["rep_id"] for r in view["reps"] if r["on_roster"]} if status == 200 \
            else set()
        if (on_roster and gone not in on_roster) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert on_roster == {r["rep_id"] for r in raw["reps"]}
    assert "R-06" not in yaml.safe_dump(yaml.safe_load(
        await export_roster(settings(broker, prefix))))


async def test_a_dry_run_writes_nothing(broker: LocalBroker, tmp_path: Path) -> None:
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    file = tmp_path / "roster.yaml"
    file.write_text(DEMO, encoding="utf-8")
    command = [sys.executable, "-m", "router", "roster", "apply", str(file), "--dry-run",
               "--broker", broker.url, "--topic-prefix", prefix]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "+ rep R-01: added" in done.stdout and "dry run: nothing written" in done.stdout
    assert not {topics.reps, topics.accounts} & await topic_names(broker)  # not even created
    # now for real, then a dry run of a change: the topic keeps its records
    await apply_roster(settings(broker, prefix), parse_roster(DEMO), dry_run=False)
    _, before = await latest(broker, topics.reps)
    file.write_text(DEMO.replace("max_open_leads: 3", "max_open_leads: 4"), encoding="utf-8")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "~ rep R-06: changed (max_open_leads 3 -> 4)" in done.stdout
    _, after = await latest(broker, topics.reps)
    assert after == before
    # a bad file is refused before anything is read or written, naming line and field
    file.write_text("reps:\n  - rep_id: R-1\n    weight: 0\n", encoding="utf-8")
    done = subprocess.run([*command[:-5], "--broker", broker.url, "--topic-prefix", prefix],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert f"{file}:3: reps[0].weight:" in done.stderr
    _, after_bad = await latest(broker, topics.reps)
    assert after_bad == before
