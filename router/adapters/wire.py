"""Bytes on the wire <-> events: orjson decoding, validation and dead letters (SPEC §6).

Every input the router cannot use is turned into a `Refused` with a short `reason` (a bounded
label for metrics) and an `error` that names the field, so an operator can fix the producer.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from router.domain.events import DeadLetter, LeadProfile, Touchpoint
from router.domain.qualification import event_time_problem
from router.domain.rules import Rules

M = TypeVar("M", bound=BaseModel)

REFUSAL_REASONS = (
    "too_large",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "unknown_value",
    "invalid_value",
    "future_event",
    "missing_key",
    "key_mismatch",
    "not_holder",  # sales activity from a rep who does not hold the lead
    "internal_error",  # a bug in the router, not in the input: the record is kept for replay
)


# An oversized input must not make an oversized dead letter (brokers cap messages near 1 MB).
DEAD_LETTER_VALUE_LIMIT = 64 * 1024
# Nor an oversized key: a valid key is a lead_id (at most 256 characters), so a longer one is
# always refused, and only its start is kept (in the letter and as the letter's message key).
DEAD_LETTER_KEY_LIMIT = 1024


class Refused(Exception):
    """An input that cannot be used; carried to the dead-letter topic."""

    def __init__(self, reason: str, error: str) -> None:
        assert reason in REFUSAL_REASONS, reason
        super().__init__(error)
        self.reason = reason
        self.error = error


def _field_name(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(value)"


def _reason_for(error_type: str) -> str:
    if error_type == "missing":
        return "missing_field"
    if error_type in ("enum", "literal_error"):
        return "unknown_value"
    if error_type.endswith("_type") or error_type in ("is_instance_of", "model_type"):
        return "wrong_type"
    return "invalid_value"


def describe(exc: ValidationError) -> Refused:
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:3]:
        msg = err["msg"].removeprefix("Value error, ")
        if len(msg) > 200:
            msg = msg[:200] + "..."
        if err["loc"]:
            parts.append(f"field '{_field_name(err['loc'])}': {msg}")
        else:  # a rule across fields; its message names the field itself
            parts.append(msg)
    if len(errors) > 3:
        parts.append(f"and {len(errors) - 3} more")
    first = errors[0]
    reason = _reason_for(first["type"])
    if not first["loc"] and "is required" in first["msg"]:
        reason = "missing_field"
    return Refused(reason, "; ".join(parts))


def decode(model: type[M], key: bytes | None, value: bytes | None, rules: Rules) -> M:
    """Parse and validate one input; raises Refused with a field-naming reason."""
    if value is None:
        raise Refused("invalid_json", "value is null (tombstones are not accepted on this topic)")
    if len(value) > rules.input.max_value_bytes:
        raise Refused(
            "too_large",
            f"value is {len(value)} bytes, over the {rules.input.max_value_bytes}-byte limit",
        )
    try:
        raw: Any = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise Refused("invalid_json", f"not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise Refused("not_an_object", f"expected a JSON object, got {type(raw).__name__}")
    try:
        # what model_validate(raw) calls, without its wrapper (a third of a microsecond on
        # every input): every option left at its default, as model_validate leaves them
        event: M = model.__pydantic_validator__.validate_python(raw)
    except ValidationError as exc:
        raise describe(exc) from None
    except RecursionError:
        raise Refused("invalid_value", "value is nested too deeply") from None
    lead_id = getattr(event, "lead_id", None)
    if lead_id is not None:
        if key is None:
            raise Refused("missing_key", "message has no key (the key must be the lead_id)")
        if key != lead_id.encode():
            shown = key[:64].decode("utf-8", "replace")
            raise Refused(
                "key_mismatch",
                f"field 'lead_id': {lead_id[:64]!r} differs from the message key {shown!r}"
                " (keys decide the partition, so per-lead state would split)",
            )
    return event


def decode_touchpoint(key: bytes | None, value: bytes | None, rules: Rules, now: datetime
                      ) -> Touchpoint:
    tp = decode(Touchpoint, key, value, rules)
    problem = event_time_problem(tp.occurred_at, now, rules)
    if problem:
        raise Refused("future_event", f"field 'occurred_at': {problem}")
    return tp


def decode_profile(key: bytes | None, value: bytes | None, rules: Rules, now: datetime
                   ) -> LeadProfile:
    profile = decode(LeadProfile, key, value, rules)
    problem = event_time_problem(profile.updated_at, now, rules)
    if problem:
        raise Refused("future_event", f"field 'updated_at': {problem}")
    return profile


def _text_or_base64(
    data: bytes | None, truncated: bool = False
) -> tuple[str | None, Literal["utf-8", "base64"]]:
    if data is None:
        return None, "utf-8"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        # Truncation may cut the last character of a text value in half: drop that partial
        # character instead of turning the whole (readable) value into base64.
        if truncated and exc.reason == "unexpected end of data":
            return data[: exc.start].decode("utf-8"), "utf-8"
        return base64.b64encode(data).decode("ascii"), "base64"


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The message key of a dead letter: the refused record's key, cut to a bounded size."""
    return key[:DEAD_LETTER_KEY_LIMIT] if key is not None else None


def dead_letter(
    refused: Refused,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    received_at: datetime,
    router_version: str,
) -> DeadLetter:
    truncated = value is not None and len(value) > DEAD_LETTER_VALUE_LIMIT
    if truncated:
        value = value[:DEAD_LETTER_VALUE_LIMIT]  # type: ignore[index]
    text, encoding = _text_or_base64(value, truncated)
    key = dead_letter_key(key)
    key_text = key.decode("utf-8", "replace") if key is not None else None
    return DeadLetter(
        source_topic=topic,
        partition=partition,
        offset=offset,
        key=key_text,
        value=text,
        value_encoding=encoding,
        value_truncated=truncated,
        error=refused.error,
        reason=refused.reason,
        received_at=received_at,
        router_version=router_version,
    )


def encode(event: BaseModel) -> bytes:
    """One canonical JSON encoding for every output (orjson over pydantic's JSON-mode dump)."""
    return orjson.dumps(event.model_dump(mode="json", by_alias=True, exclude_none=False))
