"""Each bad-input class of SPEC §6 lands in leads.deadletter with a reason naming the field,
while the worker goes on processing good events (on the real broker, real worker)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaProducer

from router.adapters.topics import Topics
from router.harness.brokers import LocalBroker
from router.harness.workers import WorkerProcess
from tests.integration.conftest import collect, send

NOW = datetime.now(UTC)


def good(lead: str, n: int, kind: str = "demo_request") -> dict[str, object]:
    return {"event_id": f"{lead}-{n}", "lead_id": lead, "type": kind,
            "occurred_at": NOW.isoformat()}


# (key, raw value, expected reason, text the error must contain)
BAD: list[tuple[str | None, bytes, str, str]] = [
    ("L-bad1", b'{"event_id": "x", "lead_id": ', "invalid_json", "not valid JSON"),
    ("L-bad2", b"[1, 2, 3]", "not_an_object", "JSON object"),
    ("L-bad3", orjson.dumps({"event_id": "e3", "lead_id": "L-bad3", "type": "page_view"}),
     "missing_field", "occurred_at"),
    ("L-bad4", orjson.dumps({**good("L-bad4", 4), "lead_id": 12345}), "wrong_type", "lead_id"),
    ("L-bad5", orjson.dumps({**good("L-bad5", 5), "type": "carrier_pigeon"}),
     "unknown_value", "type"),
    ("L-bad6", orjson.dumps({**good("L-bad6", 6),
                             "occurred_at": (NOW + timedelta(hours=2)).isoformat()}),
     "future_event", "occurred_at"),
    ("L-bad7", orjson.dumps({**good("L-bad7", 7), "properties": {"blob": "x" * 1_100_000}}),
     "too_large", "bytes"),
    ("L-other", orjson.dumps(good("L-bad8", 8)), "key_mismatch", "lead_id"),
    (None, orjson.dumps(good("L-bad9", 9)), "missing_key", "key"),
    ("L-bad10", b"\xff\xfe\x00garbage", "invalid_json", "not valid JSON"),
    ("L-bad11", orjson.dumps({**good("L-bad11", 11), "occurred_at": "2026-11-22T10:00:00"}),
     "invalid_value", "occurred_at"),
]


async def test_every_bad_input_class_is_dead_lettered_and_processing_goes_on(
    worker: WorkerProcess, broker: LocalBroker, producer: AIOKafkaProducer, topics: Topics
) -> None:
    for key, value, _, _ in BAD:
        await producer.send_and_wait(topics.touchpoints, value,
                                     key=key.encode() if key else None)
    # a bad profile too, and then good events on the same leads' partitions
    await send(producer, topics.profiles, "L-good",
               {"lead_id": "L-good", "updated_at": NOW.isoformat(), "seniority": "boss"})
    await send(producer, topics.profiles, "L-good",
               {"lead_id": "L-good", "updated_at": (NOW - timedelta(minutes=1)).isoformat(),
                "seniority": "vp", "company": {"employees": 300, "industry": "software"}})
    await send(producer, topics.touchpoints, "L-good", good("L-good", 1))

    letters = await collect(broker, topics.deadletter,
                            until=lambda rs: len(rs) >= len(BAD) + 1, timeout=40, settle=1.5)
    assert len(letters) == len(BAD) + 1, [x["reason"] for x in letters]
    by_key: dict[str | None, dict[str, object]] = {}
    for letter in letters:
        if letter["source_topic"] == topics.touchpoints:
            by_key[letter["key"]] = letter  # type: ignore[index]
    for key, value, reason, needle in BAD:
        letter = by_key[key]
        assert letter["reason"] == reason, (key, letter)
        assert needle in str(letter["error"]), (key, letter["error"])
        assert isinstance(letter["offset"], int) and isinstance(letter["partition"], int)
        if letter["value_encoding"] == "base64":
            assert base64.b64decode(str(letter["value"])) == value
        elif letter["value_truncated"]:
            assert value.decode().startswith(str(letter["value"]))
        else:
            assert letter["value"] == value.decode()
    profile_letter = [x for x in letters if x["source_topic"] == topics.profiles]
    assert len(profile_letter) == 1
    assert profile_letter[0]["reason"] == "unknown_value"
    assert "seniority" in profile_letter[0]["error"]

    # ...and the good events after them were processed: L-good became SQL (direct)
    transitions = await collect(broker, topics.transitions,
                                until=lambda rs: any(r["lead_id"] == "L-good" for r in rs),
                                timeout=30)
    assert [(r["lead_id"], r["type"], r["path"]) for r in transitions] == [
        ("L-good", "lead.sql", "direct")
    ]

    _, metrics = worker_metrics(worker)
    assert 'leadrouter_dead_letters_total{reason="invalid_json",topic="' in metrics


def worker_metrics(worker: WorkerProcess) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(worker.base_url + "/metrics", timeout=5) as resp:
        return resp.status, resp.read().decode()
