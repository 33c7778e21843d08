"""Hostile input, fuzzed (SPEC §6): the decoders of leads.touchpoints, leads.profiles and
sales.activity, and the qualifier over whole batches, fed random bytes, non-UTF-8 bytes, valid
events cut at a random byte, huge strings, deep nesting, wrong types for every field, unknown enum
values, timestamps far in the past and future (and naive ones), keys that disagree with the
lead_id, missing keys and tombstones.

Properties: a decoder returns a valid event or raises `Refused` with a known reason and a
non-empty error, never anything else; the qualifier never raises, dead-letters each refused
record exactly once (matched by partition and offset) and no valid one, still emits the valid
leads' transitions, and its dead letters are valid `DeadLetter` JSON of bounded size.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.adapters.topics import Topics
from router.adapters.wire import (
    DEAD_LETTER_KEY_LIMIT,
    DEAD_LETTER_VALUE_LIMIT,
    REFUSAL_REASONS,
    Refused,
    decode_profile,
    decode_touchpoint,
)
from router.domain.events import (
    BuyingRole,
    Channel,
    DeadLetter,
    LeadProfile,
    RejectionReason,
    SalesActivity,
    SalesActivityType,
    Seniority,
    Touchpoint,
    TouchpointType,
    format_rfc3339,
)
from router.domain.lead_state import LeadState
from router.domain.rules import load_rules
from router.records import Record
from router.service.leads_stage import forward_activity
from router.service.qualifier import Qualifier

RULES = load_rules()
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
TOPICS = Topics.with_prefix("")
TOPIC = {"touch": TOPICS.touchpoints, "profile": TOPICS.profiles, "activity": TOPICS.activity}
KINDS = ("touch", "profile", "activity")
LETTER_LIMIT = 100_000  # a dead letter of ordinary text stays under this (see the escape test)
# faust's default producer request limit: anything the worker publishes must stay below it
PRODUCER_LIMIT = 1_000_000

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(max_examples=10, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def base_doc(kind: str, lead: str = "H-1", n: int = 1) -> dict[str, Any]:
    at = "2026-11-22T09:59:00Z"
    if kind == "touch":
        return {"event_id": f"{lead}-e{n}", "lead_id": lead, "type": "demo_request",
                "occurred_at": at, "channel": "web", "account_domain": "acme.io",
                "properties": {"topic": "pricing"}}
    if kind == "profile":
        return {"lead_id": lead, "updated_at": at, "email": "a@acme.io", "name": "Ada",
                "title": "VP Sales", "seniority": "vp", "buying_role": "decision_maker",
                "language": "en", "country": "DE",
                "company": {"name": "Acme", "domain": "acme.io", "employees": 300,
                            "industry": "software"}}
    return {"event_id": f"{lead}-a{n}", "lead_id": lead, "rep_id": "R-1", "type": "rejected",
            "occurred_at": at, "reason": "no_fit", "comment": "not now"}


TIME_FIELD = {"touch": "occurred_at", "profile": "updated_at", "activity": "occurred_at"}
ENUMS: dict[str, dict[str, frozenset[str]]] = {
    "touch": {"type": frozenset(TouchpointType), "channel": frozenset(Channel)},
    "profile": {"seniority": frozenset(Seniority), "buying_role": frozenset(BuyingRole)},
    "activity": {"type": frozenset(SalesActivityType), "reason": frozenset(RejectionReason)},
}
# every field of every input; each maps to values of the wrong type for it
STRINGS = {"touch": ["event_id", "lead_id", "type", "occurred_at", "channel", "account_domain"],
           "profile": ["lead_id", "updated_at", "email", "name", "title", "seniority",
                       "buying_role", "language", "country", "company.name", "company.domain",
                       "company.industry"],
           "activity": ["event_id", "lead_id", "rep_id", "type", "occurred_at", "reason",
                        "comment"]}
OBJECTS = {"touch": ["properties"], "profile": ["company"], "activity": []}
INTEGERS = {"touch": [], "profile": ["company.employees"], "activity": []}
REQUIRED = {"event_id", "lead_id", "rep_id", "type", "occurred_at", "updated_at", "properties"}

EXPECT_ANY = "any"  # valid or refused, whatever the reason
EXPECT_REFUSED = "refused"  # refused, whatever the reason


@dataclass(frozen=True)
class Case:
    kind: str
    key: bytes | None
    value: bytes | None
    label: str
    expect: str | None  # None: accepted; a reason; or EXPECT_ANY / EXPECT_REFUSED
    field: str | None = None  # the error must name it


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                   max_size=4),
    max_leaves=12,
)
not_a_string = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=3),
)
not_an_object = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10),
    st.lists(scalars, max_size=3),
)
# a strict int that is not a non-negative integer
not_a_count = st.one_of(
    # bounded: orjson writes only 64-bit integers (beyond that is a separate, raw-JSON case)
    st.booleans(), st.integers(min_value=-(2**63), max_value=-1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10), st.lists(scalars, max_size=2),
)
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80", b"\xf0\x28\x8c\x28",
                b"\xc0\xaf"]


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    target = doc
    for part in parents:
        target = target[part]
    target[last] = value


def dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def with_raw_field(doc: dict[str, Any], name: str, raw: bytes) -> bytes:
    """The document plus one field whose JSON text is `raw` (orjson could not write it)."""
    return orjson.dumps(doc)[:-1] + b',"' + name.encode() + b'":' + raw + b"}"


def nesting(depth: int, arrays: bool) -> bytes:
    if arrays:
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"0" + b"}" * depth


def extreme_times() -> list[tuple[str, str | None]]:
    """(timestamp, reason it is refused with or None) around the limits of datetime and SPEC §6."""
    return [
        ("0001-01-01T00:00:00Z", None),  # year 1: accepted (it is just old)
        ("0001-01-01T00:00:00-01:00", None),  # 01:00 UTC of year 1
        ("0001-01-01T00:00:00+01:00", "invalid_value"),  # year 0 in UTC: not representable
        ("9999-12-31T23:59:59.999999Z", "future_event"),
        ("9999-12-31T23:59:59+14:00", "future_event"),
        ("9999-12-31T23:59:59-01:00", "invalid_value"),  # year 10000 in UTC
        (format_rfc3339(NOW + timedelta(minutes=6)), "future_event"),
        ((NOW + timedelta(seconds=301)).isoformat(), "future_event"),
        ((NOW + timedelta(seconds=300)).isoformat(), None),  # exactly the allowed skew
        (format_rfc3339(NOW.replace(year=1926)), None),  # 100 years back: accepted
        ((NOW - timedelta(days=3650)).astimezone(timezone(timedelta(hours=-9))).isoformat(),
         None),
        (NOW.replace(tzinfo=None).isoformat(), "invalid_value"),  # naive
        ("2026-11-22 10:00", "invalid_value"),  # naive too
        ("2026-13-45T99:99:99Z", "invalid_value"),
        ("yesterday", "invalid_value"),
        ("", "invalid_value"),
        ("1700000000", "invalid_value"),
    ]


@st.composite
def hostile(draw: st.DrawFn, kinds: tuple[str, ...] = KINDS, leads: tuple[str, ...] = ("H-1",)
            ) -> Case:
    kind = draw(st.sampled_from(kinds), label="kind")
    lead = draw(st.sampled_from(leads), label="lead")
    doc = base_doc(kind, lead, draw(st.integers(0, 5), label="n"))
    key: bytes | None = lead.encode()
    cls = draw(st.sampled_from([
        "random_bytes", "non_utf8", "truncated", "deep", "wrong_type", "unknown_enum",
        "timestamp", "random_time", "key_mismatch", "no_key", "tombstone", "not_an_object",
        "random_object", "big_number", "bad_id", "valid",
    ]), label="class")
    if cls == "random_bytes":
        return Case(kind, key, draw(st.binary(max_size=400)), cls, EXPECT_REFUSED)
    if cls == "non_utf8":
        raw = dumps(doc)
        at = draw(st.integers(1, len(raw) - 1))
        bad = draw(st.sampled_from(INVALID_UTF8)
                   | st.binary(min_size=1, max_size=6).filter(lambda b: not _utf8(b)))
        return Case(kind, key, raw[:at] + bad + raw[at:], cls, "invalid_json")
    if cls == "truncated":
        raw = dumps(doc)
        cut = draw(st.integers(0, len(raw) - 1))
        return Case(kind, key, raw[:cut], cls, "invalid_json")  # a strict prefix of an object
    if cls == "deep":
        depth = draw(st.sampled_from([254, 255, 256, 300, 1000, 1100, 2000, 10_000]))
        arrays = draw(st.booleans())
        raw = (b'{"a":' + nesting(depth, arrays) + b"}") if kind == "touch" else nesting(depth,
                                                                                          arrays)
        name = "properties" if kind == "touch" else "extra"  # extra fields are ignored
        # orjson refuses more than 1024 levels; the event itself is 2 of them
        expect = None if depth <= 1000 else "invalid_json"
        return Case(kind, key, with_raw_field({k: v for k, v in doc.items() if k != name}, name,
                                              raw), cls, expect)
    if cls == "wrong_type":
        fields = STRINGS[kind] + OBJECTS[kind] + INTEGERS[kind]
        field = draw(st.sampled_from(fields), label="field")
        wrong: Any
        if field in OBJECTS[kind]:
            wrong = draw(not_an_object)
        elif field in INTEGERS[kind]:
            wrong = draw(not_a_count)
        else:
            wrong = draw(not_a_string | st.none()) if field in REQUIRED else draw(not_a_string)
        set_path(doc, field, wrong)
        return Case(kind, key, dumps(doc), cls, EXPECT_REFUSED, field.split(".")[-1])
    if cls == "unknown_enum":
        field = draw(st.sampled_from(sorted(ENUMS[kind])), label="field")
        allowed = ENUMS[kind][field]
        odd = draw(st.text(max_size=30).filter(lambda v: v.strip() not in allowed)
                   | st.sampled_from(["carrier_pigeon", "PAGE_VIEW", "Vp", "boss", "ACCEPTED"]))
        doc[field] = odd
        return Case(kind, key, dumps(doc), cls, "unknown_value", field)
    if cls == "timestamp":
        ts, reason = draw(st.sampled_from(extreme_times()))
        doc[TIME_FIELD[kind]] = ts
        return Case(kind, key, dumps(doc), cls, reason, TIME_FIELD[kind] if reason else None)
    if cls == "random_time":
        when = draw(st.datetimes(timezones=st.just(UTC) | st.builds(
            lambda m: timezone(timedelta(minutes=m)), st.integers(-1439, 1439))))
        doc[TIME_FIELD[kind]] = when.isoformat()
        return Case(kind, key, dumps(doc), cls, EXPECT_ANY)
    if cls == "key_mismatch":
        key = draw(st.binary(max_size=80).filter(lambda k: k != lead.encode()))
        return Case(kind, key, dumps(doc), cls, "key_mismatch", "lead_id")
    if cls == "no_key":
        return Case(kind, None, dumps(doc), cls, "missing_key")
    if cls == "tombstone":
        return Case(kind, key, None, cls, "invalid_json")
    if cls == "not_an_object":
        value = draw(json_values.filter(lambda v: not isinstance(v, dict)))
        return Case(kind, key, orjson.dumps(value), cls, "not_an_object")
    if cls == "random_object":
        names = [*base_doc(kind), "kind", "x"]
        value = draw(st.dictionaries(st.sampled_from(names) | st.text(max_size=6), json_values,
                                     max_size=8))
        if draw(st.booleans()):  # mostly right, a few fields random
            value = {**doc, **value}
        return Case(kind, key, orjson.dumps(value), cls, EXPECT_ANY)
    if cls == "big_number":
        big = draw(st.sampled_from([b"18446744073709551616", b"18446744073709551615",
                                    b"-9223372036854775809", b"1e400", b"-1e400",
                                    b"123456789012345678901234567890", b"1e-400"]))
        if kind == "profile":
            raw = dumps({**doc, "company": {"employees": 7}}).replace(b'"employees":7',
                                                                   b'"employees":' + big)
            # orjson reads integers up to 2**64-1 as ints and larger ones as floats
            expect = {b"1e400": "invalid_json", b"-1e400": "invalid_json",
                      b"18446744073709551615": None}.get(big, EXPECT_REFUSED)
            return Case(kind, key, raw, cls, expect)
        expect = "invalid_json" if big in (b"1e400", b"-1e400") else None
        return Case(kind, key, with_raw_field(doc, "amount", big), cls, expect)
    if cls == "bad_id":
        field = "lead_id" if kind == "profile" else draw(st.sampled_from(["lead_id", "event_id"]))
        bad_id = draw(st.sampled_from(["", " ", "\t\n ", "x" * 257, "é" * 300]))
        doc[field] = bad_id
        if field == "lead_id":
            key = bad_id.encode()
        return Case(kind, key, dumps(doc), cls, "invalid_value", field)
    return Case(kind, key, dumps(doc), cls, None)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def run_decoder(case: Case) -> Touchpoint | LeadProfile | SalesActivity | Refused:
    """The decoder of the case's topic: an event, or the Refused it raised. Any other exception
    escapes and fails the test. Sales activity goes through forward_activity, the worker's path."""
    if case.kind == "touch":
        try:
            return decode_touchpoint(case.key, case.value, RULES, NOW)
        except Refused as refused:
            return refused
    if case.kind == "profile":
        try:
            return decode_profile(case.key, case.value, RULES, NOW)
        except Refused as refused:
            return refused
    out = forward_activity(Record(TOPICS.activity, 3, 7, case.key, case.value), RULES, TOPICS,
                           NOW, "fuzz")
    assert len(out.value) < PRODUCER_LIMIT, len(out.value)
    if out.topic == TOPICS.deadletter:
        letter = check_letter(out.value, case.value, partition=3, offset=7)
        assert out.key == (case.key[:DEAD_LETTER_KEY_LIMIT] if case.key is not None else None)
        return Refused(letter.reason, letter.error)
    assert out.topic == TOPICS.routing and out.key == case.key
    routed = orjson.loads(out.value)
    assert routed["kind"] == "activity"
    assert routed["source"] == {"topic": TOPICS.activity, "partition": 3, "offset": 7,
                                "value": routed["source"]["value"]}
    return SalesActivity.model_validate(routed["activity"])


def check_letter(raw: bytes, value: bytes | None, partition: int, offset: int) -> DeadLetter:
    letter = DeadLetter.model_validate_json(raw)
    assert (letter.partition, letter.offset) == (partition, offset)
    assert letter.reason in REFUSAL_REASONS and letter.reason != "internal_error", letter
    assert letter.error.strip()
    assert len(raw) < LETTER_LIMIT, len(raw)
    if value is not None and not letter.value_truncated:  # the refused value, kept as it was
        kept = (base64.b64decode(letter.value or "") if letter.value_encoding == "base64"
                else (letter.value or "").encode())
        assert kept == value
    return letter


def check_case(case: Case) -> None:
    got = run_decoder(case)
    if isinstance(got, Refused):
        assert got.reason in REFUSAL_REASONS and got.reason != "internal_error", got.reason
        assert isinstance(got.error, str) and got.error.strip()
        assert len(got.error) < 4096
        assert case.expect is not None, (case.label, got.reason, got.error)
        if case.expect not in (EXPECT_ANY, EXPECT_REFUSED):
            assert got.reason == case.expect, (case.label, got.reason, got.error)
        if case.field is not None:
            assert case.field in got.error, (case.label, got.error)
        return
    assert case.expect in (None, EXPECT_ANY), (case.label, case.expect, got)
    # what was accepted is usable downstream: keyed by its lead, not dated ahead, printable
    assert case.key == got.lead_id.encode()
    when = got.updated_at if isinstance(got, LeadProfile) else got.occurred_at
    assert when.utcoffset() is not None
    assert (when - NOW).total_seconds() <= RULES.input.max_future_seconds
    format_rfc3339(when)
    # profiles and activities are written out again (state, routing record); a touchpoint's
    # free-form properties never are (they may be nested deeper than pydantic would write)
    got.model_dump(mode="json", exclude={"properties"} if isinstance(got, Touchpoint) else None)


# --------------------------------------------------------------------------------------------
# Decoders
# --------------------------------------------------------------------------------------------


@FUZZ
@given(case=hostile(kinds=("touch",)))
def test_decode_touchpoint_returns_an_event_or_refuses(case: Case) -> None:
    check_case(case)


@FUZZ
@given(case=hostile(kinds=("profile",)))
def test_decode_profile_returns_an_event_or_refuses(case: Case) -> None:
    check_case(case)


@FUZZ
@given(case=hostile(kinds=("activity",)))
def test_forward_activity_forwards_or_dead_letters(case: Case) -> None:
    check_case(case)


@FUZZ
@given(kind=st.sampled_from(KINDS), key=st.none() | st.binary(max_size=64),
       value=st.none() | st.binary(max_size=600))
def test_random_bytes_anywhere(kind: str, key: bytes | None, value: bytes | None) -> None:
    check_case(Case(kind, key, value, "random", EXPECT_REFUSED))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("ts", "reason"), extreme_times())
def test_extreme_timestamps(kind: str, ts: str, reason: str | None) -> None:
    doc = base_doc(kind)
    doc[TIME_FIELD[kind]] = ts
    check_case(Case(kind, b"H-1", dumps(doc), "timestamp", reason,
                    TIME_FIELD[kind] if reason else None))


def test_a_timestamp_that_is_not_a_year_in_utc_names_the_field() -> None:
    """0001-01-01T00:00:00+01:00 is 31 Dec of year 0 in UTC: datetime cannot hold it, so every
    output that prints it (state, transitions, the routing record) failed; now it is refused."""
    doc = base_doc("profile")
    doc["updated_at"] = "0001-01-01T00:00:00+01:00"
    with pytest.raises(Refused) as caught:
        decode_profile(b"H-1", dumps(doc), RULES, NOW)
    assert caught.value.reason == "invalid_value"
    assert "field 'updated_at'" in caught.value.error
    assert "UTC" in caught.value.error


@pytest.mark.parametrize("depth", [254, 255, 1000, 1022])
def test_nesting_orjson_reads_flows_through_without_being_written_again(depth: int) -> None:
    """orjson.loads reads up to 1024 levels (orjson.dumps would stop at 254): properties nested
    255..1022 deep decode, and nothing downstream writes them out again, so the qualifier uses
    the touchpoint like any other and publishes nothing nested."""
    raw = with_raw_field(base_doc("touch", "L-deep"), "properties",
                         b'{"a":' + nesting(depth, arrays=depth % 2 == 0) + b"}")
    tp = decode_touchpoint(b"L-deep", raw, RULES, NOW)
    assert tp.properties["a"]
    result = qualifier().process([Record(TOPICS.touchpoints, 0, 0, b"L-deep", raw)], NOW,
                                 lambda _key: None)
    assert not [o for o in result.outputs if o.topic == TOPICS.deadletter]
    assert b"L-deep" in dict(result.writes)


@pytest.mark.parametrize("depth", [1023, 1024, 2000, 10_000, 100_000])
@pytest.mark.parametrize("arrays", [True, False])
def test_nesting_past_orjsons_limit_is_invalid_json(depth: int, arrays: bool) -> None:
    raw = with_raw_field(base_doc("touch"), "properties", b'{"a":' + nesting(depth, arrays) + b"}")
    for case in (Case("touch", b"H-1", raw, "deep", "invalid_json"),
                 Case("activity", b"H-1", raw, "deep", "invalid_json")):
        check_case(case)
    with pytest.raises(Refused, match="depth limit"):
        decode_touchpoint(b"H-1", raw, RULES, NOW)


def test_a_touchpoint_100_years_old_is_accepted_and_counts_only_by_event_time() -> None:
    """SPEC §6 refuses only events dated ahead of the clock. Windows are in event time and slide
    with the lead's newest touchpoint (SPEC §3), not with the router's clock: a touchpoint from
    1926 is accepted; for a lead with recent touchpoints it falls outside the window and changes
    nothing, and for a lead with no other touchpoints it is that lead's newest one, so it counts
    (a fit VP's demo request of 1926 still makes a direct SQL, dated 1926)."""
    old = dict(base_doc("touch", "L-old"), occurred_at="1926-11-22T10:00:00Z", event_id="old")
    assert decode_touchpoint(b"L-old", dumps(old), RULES, NOW).occurred_at.year == 1926
    profile = dumps(base_doc("profile", "L-old"))
    recent = dumps(dict(base_doc("touch", "L-old"), type="page_view", event_id="recent"))
    records = [Record(TOPICS.touchpoints, 0, 0, b"L-old", recent),
               Record(TOPICS.touchpoints, 0, 1, b"L-old", dumps(old))]
    result = qualifier().process(records, NOW, lambda _key: None)
    state = LeadState.from_bytes(dict(result.writes)[b"L-old"] or b"")
    assert [t[1] for t in state.recent] == ["recent"]  # the old one fell out of the window
    assert state.last_tts is None and not result.transitions
    assert not [o for o in result.outputs if o.topic == TOPICS.deadletter]

    alone = qualifier().process([Record(TOPICS.profiles, 0, 0, b"L-old", profile),
                                 Record(TOPICS.touchpoints, 0, 1, b"L-old", dumps(old))],
                                NOW, lambda _key: None)
    assert [(t.type, t.path, t.occurred_at.year) for t in alone.transitions] == [
        ("lead.sql", "direct", 1926)]


# --------------------------------------------------------------------------------------------
# Huge inputs (a few examples: each is up to 2 MB)
# --------------------------------------------------------------------------------------------


@FEW
@given(kind=st.sampled_from(KINDS),
       where=st.sampled_from(["lead_id", "event_id", "blob", "company.name", "comment", "key"]),
       size=st.sampled_from([100_000, 1_000_000, 1_048_577, 1_200_000, 2_000_000]),
       char=st.sampled_from(["x", "é", "😀"]))
def test_huge_strings(kind: str, where: str, size: int, char: str) -> None:
    doc = base_doc(kind)
    key: bytes | None = b"H-1"
    text = char * (size // len(char.encode()))
    if where == "key":
        key = text.encode()
    elif where == "blob" or (where == "company.name" and kind != "profile") or (
            where == "comment" and kind != "activity") or (where == "event_id"
                                                           and kind == "profile"):
        doc["blob"] = text
    else:
        set_path(doc, where, text)
        if where == "lead_id":
            key = text.encode()
    value = dumps(doc)
    case = Case(kind, key, value, "huge", EXPECT_ANY)
    got = run_decoder(case)
    if len(value) > RULES.input.max_value_bytes:
        assert isinstance(got, Refused) and got.reason == "too_large", got
    check_case(case)
    # the qualifier's dead letter for it stays small too, key included
    if kind != "activity":
        result = qualifier().process([Record(TOPIC[kind], 1, 2, key, value)], NOW,
                                     lambda _key: None)
        for out in result.outputs:
            assert len(out.value) < PRODUCER_LIMIT
            if out.topic == TOPICS.deadletter:
                check_letter(out.value, value, 1, 2)
                assert out.key is None or len(out.key) <= DEAD_LETTER_KEY_LIMIT


def test_escape_heavy_dead_letters_stay_under_the_producer_limit() -> None:
    """The kept 64 KiB of a refused value is JSON-escaped in the letter: ordinary text stays under
    100 KB (base64 of non-UTF-8 bytes is 4/3 of it), but control characters become 6 bytes each
    (\\u0001), so the true bound is about 6 x 64 KiB: still far below the 1 MB request limit."""
    for filler in ("\x01", '"', "\\"):
        value = (filler * 1_100_000).encode()  # refused anyway: too large, and not JSON
        result = qualifier().process([Record(TOPICS.touchpoints, 0, 0, b"H-1", value)], NOW,
                                     lambda _key: None)
        (out,) = result.outputs
        letter = DeadLetter.model_validate_json(out.value)
        assert letter.reason == "too_large" and letter.value_truncated
        assert value.decode().startswith(letter.value or "")
        assert len(out.value) < 6 * DEAD_LETTER_VALUE_LIMIT + 2048 < PRODUCER_LIMIT


def test_a_valid_activity_near_the_size_limit_makes_a_small_routing_record() -> None:
    """A 1 MiB activity is valid (unknown fields are ignored); the routing record carries only what
    a not_holder dead letter can keep of it, so it stays well under the producer's limit."""
    doc = base_doc("activity")
    value = with_raw_field(doc, "padding", orjson.dumps('"\\' * 255_000))
    assert len(value) < RULES.input.max_value_bytes
    out = forward_activity(Record(TOPICS.activity, 0, 0, b"H-1", value), RULES, TOPICS, NOW, "t")
    assert out.topic == TOPICS.routing
    assert len(out.value) < 3 * DEAD_LETTER_VALUE_LIMIT
    kept = orjson.loads(out.value)["source"]["value"]
    assert value.decode().startswith(kept) and len(kept) > DEAD_LETTER_VALUE_LIMIT


# --------------------------------------------------------------------------------------------
# The qualifier over batches of hostile and valid records
# --------------------------------------------------------------------------------------------


def qualifier() -> Qualifier:
    return Qualifier(RULES, TOPICS, "fuzz", lambda domain: domain == "named.io")


def refusal_of(record: Record) -> str | None:
    try:
        if record.topic == TOPICS.touchpoints:
            decode_touchpoint(record.key, record.value, RULES, NOW)
        else:
            decode_profile(record.key, record.value, RULES, NOW)
    except Refused as refused:
        return refused.reason
    return None


@FUZZ
@given(cases=st.lists(hostile(kinds=("touch", "profile"), leads=("H-1", "H-2", "H-3")),
                      min_size=1, max_size=12),
       valid=st.integers(0, 3), data=st.data())
def test_the_qualifier_dead_letters_each_refused_record_once_and_goes_on(
    cases: list[Case], valid: int, data: st.DataObject
) -> None:
    leads = [f"V-{i}" for i in range(valid)]
    good = [("profile", lead) for lead in leads] + [("touch", lead) for lead in leads]
    entries: list[tuple[str, bytes | None, bytes | None]] = [
        *[(c.kind, c.key, c.value) for c in cases],
        *[(kind, lead.encode(), dumps(base_doc(kind, lead))) for kind, lead in good],
    ]
    entries = data.draw(st.permutations(entries), label="order")
    partitions = data.draw(st.lists(st.integers(0, 7), min_size=len(entries),
                                    max_size=len(entries)), label="partitions")
    records = [Record(TOPIC[kind], p, 100 + i, key, value)
               for i, ((kind, key, value), p) in enumerate(zip(entries, partitions, strict=True))]
    expected = {(r.partition, r.offset): reason for r in records
                if (reason := refusal_of(r)) is not None}

    store: dict[bytes, bytes] = {}
    first = qualifier().process(records, NOW, store.get)
    letters = {}
    for out in first.outputs:
        if out.topic != TOPICS.deadletter:
            continue
        letter = DeadLetter.model_validate_json(out.value)
        coord = (letter.partition, letter.offset)
        assert coord not in letters, "dead-lettered twice"
        record = next(r for r in records if (r.partition, r.offset) == coord)
        check_letter(out.value, record.value, *coord)
        assert letter.source_topic == record.topic
        letters[coord] = letter.reason
    assert letters == expected  # each refused record once, no valid one

    sql = {t.lead_id for t in first.transitions if t.type == "lead.sql"}
    assert sql >= set(leads)
    for key, state in first.writes:
        assert state is not None and LeadState.from_bytes(state).lead_id == key.decode()
        store[key] = state

    # a redelivery of the same batch (at-least-once) repeats the same letters, byte for byte,
    # and no transition: the leads already reached their stage
    again = qualifier().process(records, NOW, store.get)
    dead = sorted(o.value for o in first.outputs if o.topic == TOPICS.deadletter)
    assert sorted(o.value for o in again.outputs if o.topic == TOPICS.deadletter) == dead
    assert not {t.lead_id for t in again.transitions} & sql
