"""The event contract of every topic (SPEC §2), as pydantic models.

These models are the single source of truth for the wire format: the JSON Schemas in `schemas/`
are generated from them (`leadrouter schemas export`) and a test fails when the two drift.
Input models ignore unknown fields (producers may add fields before we read them); output models
forbid them so we never publish something the schemas do not describe.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)


def parse_rfc3339(value: Any) -> datetime:
    """Accept only RFC 3339 strings with an explicit offset: a naive time is ambiguous."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"not an RFC 3339 timestamp: {value[:40]!r}"
                " (expected e.g. 2026-11-22T10:00:00Z)"
            ) from None
    else:
        raise ValueError(f"expected an RFC 3339 timestamp string, got {type(value).__name__}")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("timestamp has no UTC offset (add Z or +hh:mm)")
    if 1 < parsed.year < 9999:  # an offset is under a day: only years 1 and 9999 can overflow
        return parsed
    try:  # e.g. 0001-01-01T00:00:00+01:00 is year 0 in UTC: every output would fail to format
        parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp is outside years 1-9999 once converted to UTC") from None
    return parsed


def format_rfc3339(value: datetime) -> str:
    """UTC with a Z suffix: one canonical spelling makes outputs byte-for-byte reproducible."""
    text = value.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_rfc3339),
    PlainSerializer(format_rfc3339, return_type=str, when_used="json"),
    Field(json_schema_extra={"type": "string", "format": "date-time"}),
]

NonEmptyStr = Annotated[str, Field(min_length=1, max_length=256)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


class TouchpointType(StrEnum):
    # engagement types
    PAGE_VIEW = "page_view"
    CONTENT_DOWNLOAD = "content_download"
    WEBINAR_REGISTERED = "webinar_registered"
    WEBINAR_ATTENDED = "webinar_attended"
    EMAIL_OPEN = "email_open"
    EMAIL_CLICK = "email_click"
    EMAIL_REPLY = "email_reply"
    SOCIAL_ENGAGEMENT = "social_engagement"
    EVENT_ATTENDED = "event_attended"
    AD_CLICK = "ad_click"
    # intent types (also engagement)
    PRICING_PAGE_VIEW = "pricing_page_view"
    PRODUCT_PAGE_VIEW = "product_page_view"
    COMPETITOR_COMPARISON_VIEW = "competitor_comparison_view"
    FREE_TRIAL_SIGNUP = "free_trial_signup"
    QUIZ_COMPLETED = "quiz_completed"
    CONTACT_FORM = "contact_form"
    DEMO_REQUEST = "demo_request"
    CALENDAR_BOOKED = "calendar_booked"
    CHAT_TALK_TO_SALES = "chat_talk_to_sales"


INTENT_TYPES: frozenset[str] = frozenset(
    {
        "pricing_page_view",
        "product_page_view",
        "competitor_comparison_view",
        "free_trial_signup",
        "quiz_completed",
        "contact_form",
        "demo_request",
        "calendar_booked",
        "chat_talk_to_sales",
    }
)
TALK_TO_SALES_TYPES: frozenset[str] = frozenset(
    {"demo_request", "calendar_booked", "contact_form", "chat_talk_to_sales"}
)


class Channel(StrEnum):
    WEB = "web"
    EMAIL = "email"
    EVENT = "event"
    SOCIAL = "social"
    ADS = "ads"
    PRODUCT = "product"
    SALES = "sales"
    OTHER = "other"


class Touchpoint(_Input):
    """One marketing touch of a lead; `event_id` identifies repeats."""

    event_id: NonEmptyStr
    lead_id: NonEmptyStr
    type: TouchpointType
    occurred_at: Timestamp
    channel: Channel | None = None
    account_domain: Annotated[str, Field(max_length=253)] | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


class Seniority(StrEnum):
    C_LEVEL = "c_level"
    VP = "vp"
    DIRECTOR = "director"
    MANAGER = "manager"
    SENIOR_IC = "senior_ic"
    IC = "ic"
    UNKNOWN = "unknown"


class BuyingRole(StrEnum):
    DECISION_MAKER = "decision_maker"
    INFLUENCER = "influencer"
    END_USER = "end_user"
    RESEARCHER = "researcher"
    UNKNOWN = "unknown"


class Company(_Input):
    name: Annotated[str, Field(max_length=256)] | None = None
    domain: Annotated[str, Field(max_length=253)] | None = None
    # strict: a JSON true or "420" is a wrongly typed field (SPEC §6), not a head count
    employees: Annotated[int, Field(ge=0, strict=True)] | None = None
    industry: Annotated[str, Field(max_length=64)] | None = None


class LeadProfile(_Input):
    """Firmographics and role of a lead; the newest `updated_at` wins."""

    lead_id: NonEmptyStr
    updated_at: Timestamp
    email: Annotated[str, Field(max_length=320)] | None = None
    name: Annotated[str, Field(max_length=256)] | None = None
    title: Annotated[str, Field(max_length=256)] | None = None
    seniority: Seniority = Seniority.UNKNOWN
    buying_role: BuyingRole = BuyingRole.UNKNOWN
    language: Annotated[str, Field(pattern=r"^[a-z]{2}$")] | None = None
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None
    company: Company | None = None


class OutOfOffice(_Input):
    start: Timestamp
    end: Timestamp
    backup_rep_id: NonEmptyStr | None = None


HHMM = Annotated[str, Field(pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$")]


def check_time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
    return value


def check_working_hours(value: dict[Any, tuple[str, str]]) -> dict[Any, tuple[str, str]]:
    """Every window must open before it closes, and some day must have one: SLA deadlines in
    business time are counted inside these hours."""
    for day, (start, end) in value.items():
        if start >= end:
            raise ValueError(f"{day}: start {start} is not before end {end}")
    if not value:
        raise ValueError("at least one working day is needed (SLA deadlines count in it)")
    return value


TimeZoneName = Annotated[str, AfterValidator(check_time_zone)]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _default_working_hours() -> dict[Weekday, tuple[HHMM, HHMM]]:
    return {day: ("09:00", "17:00") for day in ("mon", "tue", "wed", "thu", "fri")}


class Rep(_Input):
    """A sales rep on the roster (`routing.reps`, compacted; a null value removes the rep)."""

    rep_id: NonEmptyStr
    name: Annotated[str, Field(max_length=256)] | None = None
    email: Annotated[str, Field(max_length=320)] | None = None
    active: Annotated[bool, Field(strict=True)] = True
    pools: list[NonEmptyStr] = Field(default_factory=list)
    languages: list[Annotated[str, Field(pattern=r"^[a-z]{2}$")]] = Field(default_factory=list)
    max_open_leads: Annotated[int, Field(ge=0, strict=True)] = 30
    weight: Annotated[int, Field(ge=1, le=100, strict=True)] = 1
    timezone: TimeZoneName = "UTC"

    @field_validator("working_hours")
    @classmethod
    def _hours(cls, value: dict[Weekday, tuple[str, str]]) -> dict[Weekday, tuple[str, str]]:
        return check_working_hours(value)
    working_hours: dict[Weekday, tuple[HHMM, HHMM]] = Field(
        default_factory=_default_working_hours
    )
    out_of_office: list[OutOfOffice] = Field(default_factory=list)


class NamedAccount(_Input):
    """An ABM account (`routing.accounts`, compacted; a null value removes it)."""

    account_domain: NonEmptyStr
    owner_rep_id: NonEmptyStr
    account_name: Annotated[str, Field(max_length=256)] | None = None


class SalesActivityType(StrEnum):
    FIRST_TOUCH = "first_touch"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DISQUALIFIED = "disqualified"
    CONVERTED = "converted"
    RELEASED = "released"


class RejectionReason(StrEnum):
    NO_FIT = "no_fit"
    BAD_TIMING = "bad_timing"
    COULD_NOT_REACH = "could_not_reach"
    WRONG_ROLE = "wrong_role"
    NO_BUDGET = "no_budget"
    COMPETITOR = "competitor"
    EXISTING_CUSTOMER = "existing_customer"
    DUPLICATE = "duplicate"
    OTHER = "other"


class SalesActivity(_Input):
    """A rep's action on a lead it holds."""

    event_id: NonEmptyStr
    lead_id: NonEmptyStr
    rep_id: NonEmptyStr
    type: SalesActivityType
    occurred_at: Timestamp
    reason: RejectionReason | None = None
    comment: Annotated[str, Field(max_length=2000)] | None = None

    @model_validator(mode="after")
    def _rejection_needs_reason(self) -> SalesActivity:
        if self.type is SalesActivityType.REJECTED and self.reason is None:
            raise ValueError("field 'reason' is required when type is 'rejected'")
        return self


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


class _Emitted(_Output):
    event_id: str = Field(description="Deterministic id derived from the cause; drop repeats.")
    router_version: str
    rules_version: str
    emitted_at: Timestamp


class Stage(StrEnum):
    NEW = "new"
    MQL = "mql"
    SQL = "sql"


class QualificationPath(StrEnum):
    STANDARD = "standard"
    DIRECT = "direct"
    ABM = "abm"


class SlaClass(StrEnum):
    HIGH_INTENT = "high_intent"
    BEHAVIOURAL = "behavioural"


class Handover(_Output):
    """Everything a rep needs to call the lead without opening five tools."""

    profile: dict[str, Any] | None
    fit: dict[str, Any]
    engagement_timeline: list[dict[str, Any]]
    intent_signals: list[dict[str, Any]]
    authority: dict[str, Any]
    score: Annotated[int, Field(ge=0, le=100)]
    talking_points: list[str]
    sla_class: SlaClass


class Transition(_Emitted):
    type: Literal["lead.mql", "lead.sql", "lead.recycled"]
    lead_id: str
    cycle: Annotated[int, Field(ge=1)]
    from_stage: Stage
    to_stage: Stage
    path: QualificationPath | None = None
    triggered_by: str
    occurred_at: Timestamp
    criteria: dict[str, Any]
    score: Annotated[int, Field(ge=0, le=100)]
    handover: Handover | None = None


class TraceEntry(_Output):
    """One step of a routing decision: a rep skipped (and why) or chosen (and by which rule)."""

    rep_id: str | None = None
    skipped: str | None = None
    chosen: str | None = None
    detail: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}


class AssignmentSla(_Output):
    class_: SlaClass = Field(alias="class")
    due_at: Timestamp

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Assignment(_Emitted):
    type: Literal["lead.assigned", "lead.reassigned", "lead.queued"]
    lead_id: str
    cycle: Annotated[int, Field(ge=1)]
    rep_id: str | None
    pool: str
    rule: Literal[
        "named_account",
        "named_account_backup",
        "round_robin",
        "language_round_robin",
        "fallback",
        "reassign_after_breach",
    ] | None
    trace: list[TraceEntry]
    sla: AssignmentSla


class SlaEvent(_Emitted):
    type: Literal["sla.warning", "sla.breached", "sla.met"]
    lead_id: str
    cycle: Annotated[int, Field(ge=1)]
    rep_id: str | None
    pool: str
    sla_class: SlaClass
    started_at: Timestamp
    due_at: Timestamp
    occurred_at: Timestamp
    response_seconds: Annotated[float, Field(ge=0)] | None = None
    detail: str | None = Field(
        default=None, description="What happened, e.g. 'nobody else is eligible; the lead stays"
        " with R-07' or 'no first touch by R-07; reassigned to R-09'.")
    reassigned_to: str | None = Field(
        default=None, description="On a breach: the rep the lead was reassigned to, if any.")


class DeadLetter(_Output):
    """An input the router refused, with enough to find and replay it."""

    source_topic: str
    partition: int
    offset: int
    key: str | None
    value: str | None
    value_encoding: Literal["utf-8", "base64"]
    value_truncated: bool = Field(
        default=False, description="True when only the first 64 KiB of an oversized value is kept."
    )
    error: str
    reason: str = Field(description="Short machine-readable class of the error, for metrics.")
    received_at: Timestamp
    router_version: str


INPUT_MODELS: dict[str, type[BaseModel]] = {
    "Touchpoint": Touchpoint,
    "LeadProfile": LeadProfile,
    "Rep": Rep,
    "NamedAccount": NamedAccount,
    "SalesActivity": SalesActivity,
}
OUTPUT_MODELS: dict[str, type[BaseModel]] = {
    "Transition": Transition,
    "Assignment": Assignment,
    "SlaEvent": SlaEvent,
    "DeadLetter": DeadLetter,
}
