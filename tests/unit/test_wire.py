"""Bad input (SPEC §6): refusals name the field; dead letters; the qualifier over raw records."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from router.adapters.topics import Topics
from router.adapters.wire import (
    DEAD_LETTER_VALUE_LIMIT,
    REFUSAL_REASONS,
    Refused,
    dead_letter,
    decode,
    decode_profile,
    decode_touchpoint,
    encode,
)
from router.domain.events import DeadLetter, LeadProfile, Touchpoint, Transition
from router.domain.lead_state import LeadState
from router.domain.rules import load_rules
from router.records import Output, Record
from router.service.qualifier import Qualifier

RULES = load_rules()
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
TOPICS = Topics.with_prefix("")


def touch(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"event_id": "tp-1", "lead_id": "L-1", "type": "page_view",
                            "occurred_at": "2026-11-22T09:00:00Z"}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not ...}


def prof(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"lead_id": "L-1", "updated_at": "2026-11-22T09:00:00Z",
                            "seniority": "director", "buying_role": "decision_maker",
                            "company": {"domain": "acme.io", "employees": 420,
                                        "industry": "saas"}}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not ...}


def refusal_of_touch(value: bytes | None, key: bytes | None = b"L-1") -> Refused:
    with pytest.raises(Refused) as caught:
        decode_touchpoint(key, value, RULES, NOW)
    assert caught.value.reason in REFUSAL_REASONS
    return caught.value


def refusal_of_profile(value: bytes | None, key: bytes | None = b"L-1") -> Refused:
    with pytest.raises(Refused) as caught:
        decode_profile(key, value, RULES, NOW)
    return caught.value


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------

# (id, key, value, reason, text the error must contain)
BAD_TOUCHPOINTS: list[tuple[str, bytes | None, bytes | None, str, str]] = [
    ("over 1 MiB", b"L-1", orjson.dumps(touch(properties={"blob": "x" * 1_100_000})),
     "too_large", "over the 1048576-byte limit"),
    ("truncated JSON", b"L-1", b'{"event_id": "x", "lead_id": ', "invalid_json", "not valid JSON"),
    ("not UTF-8", b"L-1", b"\xff\xfe\x00garbage", "invalid_json", "not valid JSON"),
    ("null value", b"L-1", None, "invalid_json", "value is null"),
    ("a list", b"L-1", b"[1, 2, 3]", "not_an_object", "expected a JSON object, got list"),
    ("a string", b"L-1", b'"hello"', "not_an_object", "got str"),
    ("no occurred_at", b"L-1", orjson.dumps(touch(occurred_at=...)),
     "missing_field", "field 'occurred_at': Field required"),
    ("no event_id", b"L-1", orjson.dumps(touch(event_id=...)),
     "missing_field", "field 'event_id'"),
    ("lead_id a number", b"L-1", orjson.dumps(touch(lead_id=12345)),
     "wrong_type", "field 'lead_id': Input should be a valid string"),
    ("properties a list", b"L-1", orjson.dumps(touch(properties=[1])),
     "wrong_type", "field 'properties'"),
    ("account_domain a number", b"L-1", orjson.dumps(touch(account_domain=5)),
     "wrong_type", "field 'account_domain'"),
    ("unknown type", b"L-1", orjson.dumps(touch(type="carrier_pigeon")),
     "unknown_value", "field 'type': Input should be 'page_view'"),
    ("unknown channel", b"L-1", orjson.dumps(touch(channel="fax")),
     "unknown_value", "field 'channel'"),
    ("naive time", b"L-1", orjson.dumps(touch(occurred_at="2026-11-22T10:00:00")),
     "invalid_value", "field 'occurred_at': timestamp has no UTC offset"),
    ("not a time", b"L-1", orjson.dumps(touch(occurred_at="yesterday")),
     "invalid_value", "field 'occurred_at': not an RFC 3339 timestamp"),
    ("blank event_id", b"L-1", orjson.dumps(touch(event_id="   ")),
     "invalid_value", "field 'event_id': String should have at least 1 character"),
    ("2 hours ahead", b"L-1",
     orjson.dumps(touch(occurred_at=(NOW + timedelta(hours=2)).isoformat())),
     "future_event", "field 'occurred_at': dated 7200 s in the future"),
    ("no key", None, orjson.dumps(touch()), "missing_key", "message has no key"),
    ("key of another lead", b"L-2", orjson.dumps(touch()),
     "key_mismatch", "field 'lead_id': 'L-1' differs from the message key 'L-2'"),
]


@pytest.mark.parametrize(
    ("key", "value", "reason", "needle"),
    [pytest.param(k, v, r, n, id=name) for name, k, v, r, n in BAD_TOUCHPOINTS],
)
def test_bad_touchpoint_is_refused_naming_the_field(
    key: bytes | None, value: bytes | None, reason: str, needle: str
) -> None:
    refused = refusal_of_touch(value, key)
    assert refused.reason == reason
    assert needle in refused.error
    assert str(refused) == refused.error


def test_every_refusal_reason_is_exercised() -> None:
    # internal_error is not about the input (see test_an_internal_error_dead_letters_...);
    # not_holder is decided by the routing stage (tests/unit/test_routing_stage.py)
    assert {reason for *_, reason, _ in BAD_TOUCHPOINTS} == set(REFUSAL_REASONS) - {
        "internal_error", "not_holder"
    }


BAD_PROFILES: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown seniority", prof(seniority="boss"), "unknown_value", "field 'seniority'"),
    ("unknown buying role", prof(buying_role="cfo"), "unknown_value", "field 'buying_role'"),
    ("no updated_at", prof(updated_at=...), "missing_field", "field 'updated_at'"),
    ("company a list", prof(company=[]), "wrong_type", "field 'company'"),
    ("employees negative", prof(company={"employees": -1}), "invalid_value",
     "field 'company.employees': Input should be greater than or equal to 0"),
    ("employees a string", prof(company={"employees": "420"}), "wrong_type",
     "field 'company.employees'"),
    ("employees true", prof(company={"employees": True}), "wrong_type",
     "field 'company.employees'"),
    ("employees fractional", prof(company={"employees": 4.5}), "wrong_type",
     "field 'company.employees'"),
    ("language upper case", prof(language="ES"), "invalid_value", "field 'language'"),
    ("country not alpha-2", prof(country="Spain"), "invalid_value", "field 'country'"),
    ("updated 1 hour ahead", prof(updated_at=(NOW + timedelta(hours=1)).isoformat()),
     "future_event", "field 'updated_at': dated 3600 s in the future"),
]


@pytest.mark.parametrize(
    ("value", "reason", "needle"),
    [pytest.param(v, r, n, id=name) for name, v, r, n in BAD_PROFILES],
)
def test_bad_profile_is_refused_naming_the_field(
    value: dict[str, Any], reason: str, needle: str
) -> None:
    refused = refusal_of_profile(orjson.dumps(value))
    assert refused.reason == reason
    assert needle in refused.error


def test_many_problems_are_summarised() -> None:
    refused = refusal_of_touch(b"{}")
    assert refused.reason == "missing_field"
    for name in ("event_id", "lead_id", "type"):
        assert f"field '{name}'" in refused.error
    assert refused.error.endswith("and 1 more")


def test_nested_field_path_in_the_error() -> None:
    refused = refusal_of_profile(orjson.dumps(prof(company={"industry": 7})))
    assert "field 'company.industry'" in refused.error


def test_good_events_decode() -> None:
    tp = decode_touchpoint(b"L-1", orjson.dumps(touch(channel="web", extra_field=1)), RULES, NOW)
    assert isinstance(tp, Touchpoint)
    assert tp.occurred_at == datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    profile = decode_profile(b"L-1", orjson.dumps(prof()), RULES, NOW)
    assert isinstance(profile, LeadProfile)
    assert profile.company is not None and profile.company.employees == 420


def test_offsets_other_than_utc_are_accepted() -> None:
    value = orjson.dumps(touch(occurred_at="2026-11-22T11:04:00+01:00"))
    tp = decode_touchpoint(b"L-1", value, RULES, NOW)
    assert tp.occurred_at == NOW + timedelta(minutes=4)


@pytest.mark.parametrize(
    ("ahead", "ok"),
    [pytest.param(300, True, id="5-min"), pytest.param(301, False, id="5-min-1-s")],
)
def test_future_limit_edge(ahead: int, ok: bool) -> None:
    value = orjson.dumps(touch(occurred_at=(NOW + timedelta(seconds=ahead)).isoformat()))
    if ok:
        decode_touchpoint(b"L-1", value, RULES, NOW)
    else:
        assert refusal_of_touch(value).reason == "future_event"


def test_size_limit_edge() -> None:
    rules = RULES.model_copy(update={"input": RULES.input.model_copy(
        update={"max_value_bytes": 2048})})
    base = orjson.dumps(touch(properties={"pad": ""}))
    exact = orjson.dumps(touch(properties={"pad": "x" * (2048 - len(base))}))
    assert len(exact) == 2048
    assert decode(Touchpoint, b"L-1", exact, rules).event_id == "tp-1"
    over = orjson.dumps(touch(properties={"pad": "x" * (2049 - len(base))}))
    with pytest.raises(Refused) as caught:
        decode(Touchpoint, b"L-1", over, rules)
    assert caught.value.reason == "too_large"
    assert "2049 bytes" in caught.value.error


def test_refused_only_accepts_known_reasons() -> None:
    with pytest.raises(AssertionError):
        Refused("made_up", "x")


# --------------------------------------------------------------------------------------------
# Dead letters
# --------------------------------------------------------------------------------------------


def letter(value: bytes | None, key: bytes | None = b"L-1") -> DeadLetter:
    return dead_letter(
        Refused("invalid_json", "not valid JSON: boom"),
        topic="leads.touchpoints", partition=3, offset=42, key=key, value=value,
        received_at=NOW, router_version="9.9.9",
    )


def test_dead_letter_keeps_utf8_text() -> None:
    d = letter(b'{"event_id": "\xc3\xa9"')
    assert (d.value, d.value_encoding, d.value_truncated) == ('{"event_id": "é"', "utf-8", False)
    assert (d.source_topic, d.partition, d.offset, d.key) == ("leads.touchpoints", 3, 42, "L-1")
    assert (d.reason, d.error) == ("invalid_json", "not valid JSON: boom")
    assert d.received_at == NOW and d.router_version == "9.9.9"


def test_dead_letter_base64_for_non_utf8() -> None:
    raw = b"\xff\xfe\x00garbage"
    d = letter(raw)
    assert d.value_encoding == "base64"
    assert d.value is not None and base64.b64decode(d.value) == raw
    assert d.value_truncated is False


def test_dead_letter_null_value_and_key() -> None:
    d = letter(None, key=None)
    assert (d.key, d.value, d.value_encoding, d.value_truncated) == (None, None, "utf-8", False)


def test_dead_letter_non_utf8_key_is_shown_with_replacement() -> None:
    assert letter(b"{}", key=b"L-\xff").key == "L-\ufffd"


def test_dead_letter_truncates_values_over_64_kib() -> None:
    raw = b"x" * (DEAD_LETTER_VALUE_LIMIT + 10)
    d = letter(raw)
    assert d.value_truncated is True
    assert d.value_encoding == "utf-8"
    assert d.value == "x" * DEAD_LETTER_VALUE_LIMIT
    exact = letter(b"y" * DEAD_LETTER_VALUE_LIMIT)
    assert exact.value_truncated is False and exact.value == "y" * DEAD_LETTER_VALUE_LIMIT


def test_truncation_through_a_multibyte_character_stays_text() -> None:
    raw = ("a" + "é" * DEAD_LETTER_VALUE_LIMIT).encode()  # the limit falls inside an "é"
    d = letter(raw)
    assert d.value_truncated is True
    assert d.value_encoding == "utf-8"
    assert d.value is not None
    assert raw.decode().startswith(d.value)
    assert len(d.value.encode()) == DEAD_LETTER_VALUE_LIMIT - 1


def test_truncated_binary_is_base64_of_the_kept_prefix() -> None:
    raw = b"\xff" * (DEAD_LETTER_VALUE_LIMIT * 2)
    d = letter(raw)
    assert d.value_truncated is True and d.value_encoding == "base64"
    assert d.value is not None
    assert base64.b64decode(d.value) == raw[:DEAD_LETTER_VALUE_LIMIT]


def test_a_dead_letter_for_a_huge_value_stays_small() -> None:
    d = letter(b"z" * 5_000_000)
    assert len(encode(d)) < DEAD_LETTER_VALUE_LIMIT + 1024


def test_dead_letter_encodes_to_the_spec_fields() -> None:
    body = orjson.loads(encode(letter(b"\xff")))
    assert set(body) == {"source_topic", "partition", "offset", "key", "value", "value_encoding",
                         "value_truncated", "error", "reason", "received_at", "router_version"}
    assert body["received_at"] == "2026-11-22T10:00:00.000Z"


# --------------------------------------------------------------------------------------------
# The qualifier over raw records
# --------------------------------------------------------------------------------------------


class Store:
    """An in-memory changelog: what load_state reads and the result's writes would write."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.loads: list[bytes] = []

    def load(self, key: bytes) -> bytes | None:
        self.loads.append(key)
        return self.data.get(key)


def qualifier() -> Qualifier:
    return Qualifier(RULES, TOPICS, "1.2.3", is_named_account=lambda d: d == "bigco.com")


def rec(topic: str, offset: int, key: bytes | None, value: Any, partition: int = 0) -> Record:
    raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    return Record(topic, partition, offset, key, raw)


def tp_rec(offset: int, lead: str, n: int, kind: str, minutes_ago: float = 60,
           partition: int = 0) -> Record:
    value = touch(event_id=f"{lead}-{n}", lead_id=lead, type=kind,
                  occurred_at=(NOW - timedelta(minutes=minutes_ago)).isoformat())
    return rec(TOPICS.touchpoints, offset, lead.encode(), value, partition)


def prof_rec(offset: int, lead: str, partition: int = 0, **overrides: Any) -> Record:
    return rec(TOPICS.profiles, offset, lead.encode(), prof(lead_id=lead, **overrides), partition)


def by_topic(outputs: list[Output], topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(o.value) for o in outputs if o.topic == topic]


def test_qualifier_end_to_end() -> None:
    store = Store()
    records = [
        prof_rec(0, "L-std", partition=1),
        tp_rec(1, "L-std", 1, "page_view", partition=1),
        rec(TOPICS.touchpoints, 2, b"L-bad", b"{not json"),
        tp_rec(3, "L-std", 2, "pricing_page_view", partition=1),
        tp_rec(4, "L-dir", 1, "demo_request", partition=2),
        prof_rec(5, "L-dir", partition=2),
        rec(TOPICS.profiles, 6, b"L-std", prof(lead_id="L-std", seniority="boss")),
        tp_rec(7, "L-std", 3, "email_click", partition=1),
        tp_rec(8, "L-std", 3, "email_click", partition=1),  # repeat
        tp_rec(9, "L-std", 4, "pricing_page_view", partition=1),
        rec(TOPICS.touchpoints, 10, None, touch(lead_id="L-nokey")),
    ]
    result = qualifier().process(records, NOW, store.load)

    transitions = by_topic(result.outputs, TOPICS.transitions)
    assert [(t["event_id"], t["path"], t["triggered_by"]) for t in transitions] == [
        ("L-std:c1:mql", "standard", "L-std-2"),
        ("L-dir:c1:sql", "direct", "profile@2026-11-22T09:00:00.000Z"),
        ("L-std:c1:sql", "standard", "L-std-4"),
    ]
    for t in transitions:
        Transition.model_validate(t)
        assert t["router_version"] == "1.2.3" and t["rules_version"] == RULES.version
        assert t["emitted_at"] == "2026-11-22T10:00:00.000Z"
    assert [o.key for o in result.outputs if o.topic == TOPICS.transitions] == [
        b"L-std", b"L-dir", b"L-std"
    ]
    assert [t.event_id for t in result.transitions] == [t["event_id"] for t in transitions]

    letters = by_topic(result.outputs, TOPICS.deadletter)
    assert [(d["offset"], d["source_topic"], d["reason"]) for d in letters] == [
        (2, TOPICS.touchpoints, "invalid_json"),
        (6, TOPICS.profiles, "unknown_value"),
        (10, TOPICS.touchpoints, "missing_key"),
    ]
    assert "field 'seniority'" in letters[1]["error"]
    assert letters[0]["value"] == "{not json" and letters[0]["key"] == "L-bad"
    for d in letters:
        DeadLetter.model_validate(d)
    dead_keys = [o.key for o in result.outputs if o.topic == TOPICS.deadletter]
    assert dead_keys == [b"L-bad", b"L-std", None]

    # one state write per lead per batch; bad records write nothing
    assert sorted(key for key, _ in result.writes) == [b"L-dir", b"L-std"]
    assert sorted(store.loads) == [b"L-dir", b"L-std"]  # each lead's state read once
    std = LeadState.from_bytes(dict(result.writes)[b"L-std"] or b"")
    assert std.stage.value == "sql"
    assert len(std.recent) == 4  # the repeat counted once


def test_state_carries_over_between_batches() -> None:
    store = Store()
    q = qualifier()
    first = q.process([prof_rec(0, "L-1"), tp_rec(1, "L-1", 1, "page_view"),
                       tp_rec(2, "L-1", 2, "product_page_view")], NOW, store.load)
    assert [t.event_id for t in first.transitions] == ["L-1:c1:mql"]
    store.data.update({k: v for k, v in first.writes if v is not None})

    # a replay of the first batch (as after a crash) emits nothing new
    replay = q.process([tp_rec(1, "L-1", 1, "page_view"),
                        tp_rec(2, "L-1", 2, "product_page_view")], NOW, store.load)
    assert replay.transitions == []

    second = q.process([tp_rec(3, "L-1", 3, "calendar_booked")], NOW, store.load)
    assert [(t.event_id, t.path) for t in second.transitions] == [("L-1:c1:sql", "direct")]
    sql = second.transitions[0]
    assert sql.handover is not None and sql.handover.sla_class == "high_intent"


def test_replaying_a_batch_from_scratch_gives_the_same_output_ids() -> None:
    records = [prof_rec(0, "L-1"), tp_rec(1, "L-1", 1, "page_view"),
               tp_rec(2, "L-1", 2, "pricing_page_view"), tp_rec(3, "L-1", 3, "page_view", 30),
               tp_rec(4, "L-1", 4, "pricing_page_view", 10)]
    a = qualifier().process(records, NOW, Store().load)
    b = qualifier().process(records, NOW + timedelta(seconds=5), Store().load)
    assert [t.event_id for t in a.transitions] == [t.event_id for t in b.transitions] == [
        "L-1:c1:mql", "L-1:c1:sql"
    ]


def test_batch_of_only_bad_records_writes_no_state() -> None:
    result = qualifier().process(
        [rec(TOPICS.touchpoints, 0, b"L-1", b"[]"),
         rec(TOPICS.touchpoints, 1, b"L-1",
             touch(occurred_at=(NOW + timedelta(days=1)).isoformat()))],
        NOW, Store().load,
    )
    assert result.writes == []
    assert [d["reason"] for d in by_topic(result.outputs, TOPICS.deadletter)] == [
        "not_an_object", "future_event"
    ]
    assert result.transitions == []


def test_an_internal_error_dead_letters_the_record_and_the_batch_goes_on() -> None:
    """A bug (here: the named-account lookup blows up for one domain) must not stop the
    partition or lose the record: it goes to the dead-letter topic as internal_error."""

    def flaky_lookup(domain: str) -> bool:
        if domain == "boom.example":
            raise RuntimeError("lookup failed")
        return False

    q = Qualifier(RULES, TOPICS, "1.2.3", is_named_account=flaky_lookup)
    store = Store()
    # an intent touch, so that the lead is assessed (which asks about its account's domain)
    bad = touch(event_id="x-1", lead_id="L-x", type="pricing_page_view",
                occurred_at=(NOW - timedelta(minutes=5)).isoformat(),
                account_domain="boom.example")
    records = [
        prof_rec(0, "L-ok"),
        rec(TOPICS.touchpoints, 1, b"L-x", bad),
        tp_rec(2, "L-ok", 1, "demo_request"),
    ]
    result = q.process(records, NOW, store.load)
    letters = by_topic(result.outputs, TOPICS.deadletter)
    assert [(x["reason"], x["offset"], x["key"]) for x in letters] == [
        ("internal_error", 1, "L-x")
    ]
    assert "RuntimeError: lookup failed" in letters[0]["error"]
    assert [t["event_id"] for t in by_topic(result.outputs, TOPICS.transitions)] == [
        "L-ok:c1:sql"
    ]
