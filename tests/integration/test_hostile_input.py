"""Hostile input on the real broker (SPEC §6): one worker is fed 458 seeded hostile records
(random bytes, non-UTF-8 bytes, truncated JSON, 1100- and 10 000-level nesting, wrong types,
unknown enum values, timestamps in year 1 / year 9999 / 6 minutes ahead / naive / 100 years back,
keys that disagree with the lead_id, missing keys, tombstones, JSON that is not an object, numbers
over 64 bits, blank and over-long ids, values up to 1.2 MB and keys of 1.2 MB) on
leads.touchpoints, leads.profiles and sales.activity, interleaved with 50 valid leads (a fit VP's
profile and a demo request each).

Inputs tried: 458 hostile records. 410 of them run in the main test: 387 must be dead-lettered and
23 are in fact usable (100 years old, 300-level nesting, a 1 MB valid touchpoint, a 64-bit
employee count...) and must not be. Every refused record appears exactly once in
leads.deadletter (matched by source topic, partition and offset) with the reason the decoders
give it and a non-empty error; every valid lead still becomes SQL; the worker stays alive and
ready. Sales activity that decodes is forwarded and then refused as `not_holder` (nobody holds an
H- lead). The other 48 are sales.activity values that are not JSON at all: they run in the
second test, an expected failure until the worker reads that topic raw (see its reason).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from router.adapters.topics import Topics
from router.adapters.wire import REFUSAL_REASONS, Refused, decode, decode_profile, decode_touchpoint
from router.domain.events import DeadLetter, SalesActivity
from router.domain.qualification import event_time_problem
from router.domain.rules import load_rules
from router.harness.brokers import LocalBroker
from tests.integration.conftest import collect, new_prefix, start_worker

RULES = load_rules()
SEED = 20261122
HOSTILE_COUNT = 450  # regular hostile records, plus the huge ones below
VALID_LEADS = 50
KINDS = ("touch", "profile", "activity")
Coord = tuple[str, int, int]  # source topic, partition, offset


@dataclass
class Item:
    kind: str  # touch | profile | activity
    key: bytes | None
    value: bytes | None
    label: str
    valid_lead: bool = False
    expect: str | None = None  # reason it must be dead-lettered with; None: not dead-lettered


def base_doc(kind: str, lead: str, n: int, now: datetime) -> dict[str, Any]:
    at = (now - timedelta(minutes=1)).isoformat()
    if kind == "touch":
        return {"event_id": f"{lead}-e{n}", "lead_id": lead, "type": "demo_request",
                "occurred_at": at, "properties": {"topic": "fuzz"}}
    if kind == "profile":
        return {"lead_id": lead, "updated_at": at, "seniority": "vp",
                "buying_role": "decision_maker",
                "company": {"employees": 300, "industry": "software"}}
    return {"event_id": f"{lead}-a{n}", "lead_id": lead, "rep_id": "R-nobody",
            "type": "accepted", "occurred_at": at}


TIME_FIELD = {"touch": "occurred_at", "profile": "updated_at", "activity": "occurred_at"}
ENUM_FIELDS = {"touch": ["type", "channel"], "profile": ["seniority", "buying_role"],
               "activity": ["type", "reason"]}
WRONG_TYPE_FIELDS = {"touch": ["event_id", "lead_id", "type", "occurred_at", "properties"],
            "profile": ["lead_id", "updated_at", "seniority", "company", "email", "country"],
            "activity": ["event_id", "lead_id", "rep_id", "type", "occurred_at", "comment"]}


def nested(depth: int, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def with_raw_field(doc: dict[str, Any], name: str, raw: bytes) -> bytes:
    """The document with one more field whose JSON text is `raw` (orjson cannot write it)."""
    return orjson.dumps(doc)[:-1] + b',"' + name.encode() + b'":' + raw + b"}"


def hostile(i: int, rng: random.Random, now: datetime) -> Item:
    kind = KINDS[i % 3]
    lead = f"H-{i}"
    doc = base_doc(kind, lead, i, now)
    key: bytes | None = lead.encode()
    cls = rng.choice([
        "random_bytes", "non_utf8", "truncated", "deep", "deep_ok", "wrong_type", "unknown_enum",
        "timestamp", "key_mismatch", "no_key", "tombstone", "not_object", "big_number",
        "blank_id", "long_id",
    ])
    value: bytes | None
    if cls == "random_bytes":
        value = rng.randbytes(rng.randint(0, 300))
    elif cls == "non_utf8":
        raw = orjson.dumps(doc)
        at = raw.index(lead.encode())
        bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\xfe"])
        value = raw[:at] + bad + raw[at:]
    elif cls == "truncated":
        raw = orjson.dumps(doc)
        value = raw[: rng.randrange(len(raw))]
    elif cls == "deep":
        value = with_raw_field(doc, "properties" if kind == "touch" else "extra",
                               nested(rng.choice([1100, 10_000]), rng))
    elif cls == "deep_ok":
        value = with_raw_field(doc, "properties" if kind == "touch" else "extra",
                               nested(300, rng))
    elif cls == "wrong_type":
        field = rng.choice(WRONG_TYPE_FIELDS[kind])
        doc[field] = rng.choice([12345, 1.5, True, [1, 2], {"x": 1}] if field not in
                                ("properties", "company") else [12345, 1.5, True, [1], "text"])
        value = orjson.dumps(doc)
    elif cls == "unknown_enum":
        field = rng.choice(ENUM_FIELDS[kind])
        doc[field] = rng.choice(["carrier_pigeon", "PAGE_VIEW", "boss", "", "vp ", "teleported"])
        if field == "reason":
            doc["type"] = "rejected"
        value = orjson.dumps(doc)
    elif cls == "timestamp":
        doc[TIME_FIELD[kind]] = rng.choice([
            "0001-01-01T00:00:00Z",  # accepted (far past)
            "0001-01-01T00:00:00+01:00",  # not representable in UTC
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59-01:00",
            (now + timedelta(minutes=6)).isoformat(),
            (now - timedelta(days=36525)).isoformat(),  # accepted (100 years back)
            now.replace(tzinfo=None).isoformat(),  # naive
            "yesterday", "", "2026-13-45T99:99:99Z",
        ])
        value = orjson.dumps(doc)
    elif cls == "key_mismatch":
        key = rng.choice([b"H-other", rng.randbytes(8), b"\xff\xfe", lead.lower().encode() + b" "])
        value = orjson.dumps(doc)
    elif cls == "no_key":
        key = None
        value = orjson.dumps(doc)
    elif cls == "tombstone":
        value = None
    elif cls == "not_object":
        value = rng.choice([b"[1, 2, 3]", b'"hello"', b"null", b"42", b"true", b"[{}]"])
    elif cls == "big_number":
        big = rng.choice([b"18446744073709551616", b"-9223372036854775809", b"1e400",
                          b"123456789012345678901234567890"])
        if kind == "profile":
            raw = orjson.dumps({**doc, "company": {"employees": 1}})
            value = raw.replace(b'"employees":1', b'"employees":' + big)
        else:
            value = with_raw_field(doc, "amount", big)
    elif cls == "blank_id":
        doc["lead_id"] = rng.choice(["", "   ", "\t\n"])
        value = orjson.dumps(doc)
    else:  # long_id
        doc["lead_id"] = "L" * rng.choice([257, 5000, 100_000])
        key = doc["lead_id"].encode()
        value = orjson.dumps(doc)
    return Item(kind, key, value, cls)


def huge(rng: random.Random, now: datetime) -> list[Item]:
    items = []
    for kind in KINDS:
        doc = base_doc(kind, f"H-big-{kind}", 0, now)
        # over the 1 MiB input limit: too_large
        value = with_raw_field(doc, "blob", orjson.dumps("x" * rng.randint(1_100_000, 1_200_000)))
        items.append(Item(kind, f"H-big-{kind}".encode(), value, "too_large"))
        # a key of 1.2 MB (the lead_id disagrees with it): the dead letter must stay small
        items.append(Item(kind, b"K" * 1_200_000, orjson.dumps(doc), "huge_key"))
    # under the limit and valid: a touchpoint is used, an activity is forwarded, then refused
    # as not_holder; its escape-heavy text must not make the forwarded record too big
    for kind, lead in (("touch", "H-big-ok-touch"), ("activity", "H-big-ok-act")):
        doc = base_doc(kind, lead, 0, now)
        value = with_raw_field(doc, "padding", orjson.dumps('"\\' * 255_000))
        assert len(value) < RULES.input.max_value_bytes
        items.append(Item(kind, lead.encode(), value, "huge_valid"))
    return items


def expected_reason(item: Item, now: datetime) -> str | None:
    """What the decoders say about the record; a valid activity is refused later, not_holder."""
    try:
        if item.kind == "touch":
            decode_touchpoint(item.key, item.value, RULES, now)
        elif item.kind == "profile":
            decode_profile(item.key, item.value, RULES, now)
        else:
            activity = decode(SalesActivity, item.key, item.value, RULES)
            if event_time_problem(activity.occurred_at, now, RULES):
                return "future_event"
            return "not_holder"
    except Refused as refused:
        return refused.reason
    return None


def faust_rejects(item: Item) -> bool:
    """A sales.activity value faust's own JSON codec could not read: the topic is declared raw
    so these reach our decoder and the dead-letter topic (the test at the end of this file)."""
    if item.kind != "activity" or item.value is None:
        return False
    try:
        orjson.loads(item.value.decode())
    except (UnicodeDecodeError, orjson.JSONDecodeError):
        return True
    return False


def build(now: datetime) -> tuple[list[Item], list[str]]:
    rng = random.Random(SEED)
    items = [hostile(i, rng, now) for i in range(HOSTILE_COUNT)] + huge(rng, now)
    rng.shuffle(items)
    leads = [f"V-{i}" for i in range(VALID_LEADS)]
    for lead in leads:
        profile = Item("profile", lead.encode(), orjson.dumps(base_doc("profile", lead, 0, now)),
                       "valid", valid_lead=True)
        touch = Item("touch", lead.encode(), orjson.dumps(base_doc("touch", lead, 0, now)),
                     "valid", valid_lead=True)
        at = rng.randrange(len(items) + 1)
        items.insert(at, profile)
        items.insert(rng.randrange(at + 1, len(items) + 1), touch)  # after its profile
    for item in items:
        item.expect = None if item.valid_lead else expected_reason(item, now)
    return items, leads


async def read_dead_letters(broker: LocalBroker, topic: str,
                            until: Callable[[list[dict[str, Any]]], bool],
                            timeout: float = 90.0, settle: float = 2.0) -> list[dict[str, Any]]:
    """Every dead letter, repeats kept, each under the producer's 1 MB limit."""
    letters = await collect(broker, topic, until, timeout=timeout, settle=settle,
                            keep_repeats=True, max_value_bytes=1_000_000)
    for letter in letters:
        del letter["_key"]  # collect's bookkeeping, not part of the DeadLetter event
    return letters


def check_letters(letters: list[dict[str, Any]], coords: dict[Coord, Item],
                  expected: dict[Coord, str], prefix: str) -> None:
    """Each expected record dead-lettered with its reason, once (only identical repeats), and
    nothing else dead-lettered."""
    by_coord: dict[Coord, list[dict[str, Any]]] = {}
    for letter in letters:
        DeadLetter.model_validate(letter)
        by_coord.setdefault(
            (letter["source_topic"], letter["partition"], letter["offset"]), []
        ).append(letter)
    missing = Counter((c[0].removeprefix(prefix), coords[c].label)
                      for c in expected.keys() - by_coord.keys())
    assert not missing, (sorted(missing.items()), len(letters))
    unexpected = {c: (coords[c].label if c in coords else "?", v[0]["reason"], v[0]["error"])
                  for c, v in by_coord.items() if c not in expected}
    assert not unexpected, unexpected  # no valid (or usable) record was dead-lettered
    for coord, group in by_coord.items():
        first = group[0]
        # exactly once: a repeat (at-least-once redelivery) must be the same letter
        same = {(x["reason"], x["error"], x["key"], x["value"]) for x in group}
        assert len(same) == 1, (coords[coord].label, same)
        assert first["reason"] == expected[coord], (coords[coord].label, first)
        assert first["reason"] in REFUSAL_REASONS and first["reason"] != "internal_error"
        assert first["error"].strip(), first


async def produce(producer: AIOKafkaProducer, topics: Topics, items: list[Item]
                  ) -> tuple[dict[Coord, Item], dict[Coord, str]]:
    topic_of = {"touch": topics.touchpoints, "profile": topics.profiles,
                "activity": topics.activity}
    futures = [await producer.send(topic_of[x.kind], x.value, key=x.key) for x in items]
    metas = await asyncio.gather(*futures)
    coords = {(m.topic, m.partition, m.offset): x for m, x in zip(metas, items, strict=True)}
    expected = {c: x.expect for c, x in coords.items() if x.expect is not None}
    return coords, expected


async def test_hostile_input_is_dead_lettered_once_and_the_worker_keeps_going(
    broker: LocalBroker, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    worker = start_worker(broker, prefix, tmp_path)
    try:
        now = datetime.now(UTC)
        items, leads = build(now)
        items = [x for x in items if not faust_rejects(x)]
        hostile_items = [x for x in items if not x.valid_lead]
        # the mix covers every class and is the one the module docstring counts
        assert len({x.label for x in hostile_items}) == 18
        assert len(hostile_items) == 410
        coords, expected = await produce(producer, topics, items)
        assert len(expected) == 387

        def seen(letters: list[dict[str, Any]]) -> bool:
            got = {(x["source_topic"], x["partition"], x["offset"]) for x in letters}
            return expected.keys() <= got

        letters = await read_dead_letters(broker, topics.deadletter, seen, timeout=90)
        check_letters(letters, coords, expected, prefix)

        sqls = await collect(
            broker, topics.transitions,
            until=lambda rs: {r["lead_id"] for r in rs if r["type"] == "lead.sql"} >= set(leads),
            timeout=90, settle=0.5)
        assert {r["lead_id"] for r in sqls if r["type"] == "lead.sql"} >= set(leads)

        assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
        health, _ = worker.get("/health", timeout=5)
        ready, body = worker.get("/ready", timeout=5)
        assert health == 200
        assert ready == 200, body
    finally:
        worker.stop()


async def test_sales_activity_that_is_not_json_is_dead_lettered(
    broker: LocalBroker, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    prefix = new_prefix()
    topics = Topics.with_prefix(prefix)
    worker = start_worker(broker, prefix, tmp_path)
    try:
        now = datetime.now(UTC)
        items = [x for x in build(now)[0] if faust_rejects(x)]
        assert len(items) >= 20
        after = Item("activity", b"H-after", orjson.dumps(base_doc("activity", "H-after", 0, now)),
                     "valid_after", expect="not_holder")
        coords, expected = await produce(producer, topics, [*items, after])

        def seen(letters: list[dict[str, Any]]) -> bool:
            got = {(x["source_topic"], x["partition"], x["offset"]) for x in letters}
            return expected.keys() <= got

        letters = await read_dead_letters(broker, topics.deadletter, seen, timeout=20)
        check_letters(letters, coords, expected, prefix)
        assert worker.process is not None and worker.process.poll() is None
    finally:
        worker.stop()
