"""The rules file: one declarative YAML document, validated at start with line-precise errors.

Why YAML: comments for the revenue-ops people who edit it, and PyYAML's node marks give us the
line of every field, so a bad value is reported as `rules.yaml:17 authority.sql.seniorities[0]`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from router.domain.events import BuyingRole, Seniority, TimeZoneName, check_working_hours

SENIORITY_RANK: dict[Seniority, int] = {
    Seniority.UNKNOWN: 0,
    Seniority.IC: 1,
    Seniority.SENIOR_IC: 2,
    Seniority.MANAGER: 3,
    Seniority.DIRECTOR: 4,
    Seniority.VP: 5,
    Seniority.C_LEVEL: 6,
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(ge=1)]


class Windows(_Section):
    engagement_days: Annotated[int, Field(ge=1, le=365)] = 30
    pricing_pair_days: Annotated[int, Field(ge=1, le=365)] = 7

    @model_validator(mode="after")
    def _pair_inside_window(self) -> Windows:
        if self.pricing_pair_days > self.engagement_days:
            raise ValueError("pricing_pair_days must not exceed engagement_days")
        return self


class Fit(_Section):
    employees_min: Annotated[int, Field(ge=0)] = 50
    employees_max: Annotated[int, Field(ge=0)] = 2000
    industries: frozenset[str] = frozenset(
        {"saas", "software", "financial_services", "business_services"}
    )

    @field_validator("industries")
    @classmethod
    def _lower(cls, value: frozenset[str]) -> frozenset[str]:
        return frozenset(v.strip().lower() for v in value)

    @model_validator(mode="after")
    def _ordered(self) -> Fit:
        if self.employees_min > self.employees_max:
            raise ValueError("employees_min must not exceed employees_max")
        return self


class MqlAuthority(_Section):
    min_seniority: Seniority = Seniority.MANAGER
    buying_roles: frozenset[BuyingRole] = frozenset(
        {BuyingRole.INFLUENCER, BuyingRole.DECISION_MAKER}
    )


class SqlAuthority(_Section):
    seniorities: frozenset[Seniority] = frozenset(
        {Seniority.DIRECTOR, Seniority.VP, Seniority.C_LEVEL}
    )
    buying_roles: frozenset[BuyingRole] = frozenset({BuyingRole.DECISION_MAKER})


class Authority(_Section):
    mql: MqlAuthority = MqlAuthority()
    sql: SqlAuthority = SqlAuthority()


class Engagement(_Section):
    mql_min_touchpoints: PositiveInt = 2
    sql_min_touchpoints: PositiveInt = 4
    sql_requires_intent: bool = True


class Intent(_Section):
    sql_min_pricing_views: Annotated[int, Field(ge=1, le=50)] = 2
    quiz_talk_to_sales_score: float = 80


class ScoreWeights(_Section):
    fit: Annotated[int, Field(ge=0)] = 25
    authority: Annotated[int, Field(ge=0)] = 25
    engagement: Annotated[int, Field(ge=0)] = 25
    intent: Annotated[int, Field(ge=0)] = 25

    @model_validator(mode="after")
    def _sum_100(self) -> ScoreWeights:
        total = self.fit + self.authority + self.engagement + self.intent
        if total != 100:
            raise ValueError(f"score weights must add up to 100, they add up to {total}")
        return self


class Score(_Section):
    weights: ScoreWeights = ScoreWeights()
    engagement_saturation: PositiveInt = 8


class HandoverRules(_Section):
    timeline_size: Annotated[int, Field(ge=1, le=100)] = 10
    talking_points: Annotated[int, Field(ge=0, le=20)] = 5


class InputRules(_Section):
    max_future_seconds: Annotated[int, Field(ge=0)] = 300
    max_value_bytes: Annotated[int, Field(ge=1024)] = 1_048_576


CountryCode = Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
PoolName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
HourMinute = Annotated[str, Field(pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$")]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


# SPEC §4 default territories (the shipped default_rules.yaml spells the same lists out).
DEFAULT_TERRITORIES: dict[str, str] = {
    "NA": (
        "US CA"
    ),
    "LATAM": (
        "MX BZ CR SV GT HN NI PA AR BO BR CL CO EC GY PY PE SR UY VE"
    ),
    "EMEA": (
        "AL AD AT BY BE BA BG HR CY CZ DK EE FI FR DE GR HU IS IE IT XK LV LI LT "
        "LU MT MD MC ME NL MK NO PL PT RO RU SM RS SK SI ES SE CH UA GB VA AE BH "
        "IL IQ IR JO KW LB OM PS QA SA SY TR YE DZ AO BJ BW BF BI CM CV CF TD KM "
        "CG CD CI DJ EG GQ ER SZ ET GA GM GH GN GW KE LS LR LY MG MW ML MR MU MA "
        "MZ NA NE NG RW ST SN SC SL SO ZA SS SD TZ TG TN UG ZM ZW"
    ),
    "APAC": (
        "AF AM AZ BD BT BN KH CN GE HK IN ID JP KZ KG LA MO MY MV MN MM NP KP KR "
        "PK PH SG LK TW TJ TH TL TM UZ VN AU NZ FJ PG SB VU WS TO KI FM MH NR PW "
        "TV"
    ),
}


class Territory(_Section):
    """Leads matching every given condition go to `pool`; the first matching territory wins."""

    pool: PoolName
    countries: frozenset[CountryCode] = frozenset()  # empty: any country
    employees_min: Annotated[int, Field(ge=0)] | None = None
    employees_max: Annotated[int, Field(ge=0)] | None = None


class RoutingRules(_Section):
    territories: list[Territory] = Field(
        default_factory=lambda: [
            Territory(pool=pool, countries=frozenset(codes.split()))
            for pool, codes in DEFAULT_TERRITORIES.items()
        ]
    )
    fallback_pool: PoolName = "global"
    # SPEC §4: capacity does not block named-account owners (or their backups) by default
    named_account_ignores_capacity: bool = True
    queue_drain_batch: Annotated[int, Field(ge=1, le=10_000)] = 200


class ReassignOnBreach(_Section):
    high_intent: bool = True
    behavioural: bool = False


class SlaRules(_Section):
    high_intent_minutes: Annotated[float, Field(gt=0)] = 5
    behavioural_business_hours: Annotated[float, Field(gt=0)] = 1
    warning_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.8
    reassign_on_breach: ReassignOnBreach = ReassignOnBreach()
    # hours used for a queued lead, before a rep (and its hours) is known
    default_timezone: TimeZoneName = "UTC"
    default_working_hours: dict[str, tuple[HourMinute, HourMinute]] = Field(
        default_factory=lambda: {d: ("09:00", "17:00") for d in WEEKDAYS[:5]}
    )

    @field_validator("default_working_hours")
    @classmethod
    def _weekdays(cls, value: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
        for day in value:
            if day not in WEEKDAYS:
                raise ValueError(f"unknown weekday {day!r} (use {', '.join(WEEKDAYS)})")
        return check_working_hours(value)


class Decay(_Section):
    """SPEC §2.2: an MQL that sees no engagement for a whole window returns to nurture."""

    enabled: bool = True
    # None: the engagement window (windows.engagement_days); a fraction of a day is allowed
    mql_after_days: Annotated[float, Field(gt=0, le=365)] | None = None


class Rules(_Section):
    """The validated rules; `version` is stamped on every output as `rules_version`."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] = (
        "default"
    )
    windows: Windows = Windows()
    fit: Fit = Fit()
    authority: Authority = Authority()
    engagement: Engagement = Engagement()
    intent: Intent = Intent()
    score: Score = Score()
    handover: HandoverRules = HandoverRules()
    input: InputRules = InputRules()
    routing: RoutingRules = RoutingRules()
    sla: SlaRules = SlaRules()
    decay: Decay = Decay()
    _version: str = PrivateAttr(default="")

    @property
    def version(self) -> str:
        """`name@hash-of-the-file`: stamped on every output as `rules_version`."""
        return self._version or f"{self.name}@unversioned"

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> Rules:
        e = self.engagement
        if e.mql_min_touchpoints > e.sql_min_touchpoints:
            raise ValueError(
                "engagement.mql_min_touchpoints must not exceed engagement.sql_min_touchpoints"
            )
        return self

    @property
    def window_seconds(self) -> float:
        return self.windows.engagement_days * 86400.0

    @property
    def decay_seconds(self) -> float | None:
        """How long an MQL may go without engagement before it decays; None: never."""
        if not self.decay.enabled:
            return None
        days = self.decay.mql_after_days
        return (days if days is not None else self.windows.engagement_days) * 86400.0

    @property
    def pricing_pair_seconds(self) -> float:
        return self.windows.pricing_pair_days * 86400.0


@dataclass(frozen=True)
class RuleProblem:
    line: int | None
    field: str
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.field or '(top level)'}: {self.message}"


class RulesError(ValueError):
    """A rules file that cannot be used; `problems` name the line and the field of each fault."""

    def __init__(self, source: str, problems: list[RuleProblem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.render(source) for p in problems))


def _line_index(node: yaml.Node, path: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]
                ) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            if (*path, key) in out:
                # YAML would silently keep the last one; a rules file must not be ambiguous
                raise RulesError("", [RuleProblem(
                    key_node.start_mark.line + 1, field_path((*path, key)),
                    f"set twice (first on line {out[(*path, key)]})")])
            _line_index(value_node, (*path, key), out)
            out[(*path, key)] = key_node.start_mark.line + 1  # an entry's line is its key's
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, (*path, i), out)


def field_path(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


Loc = tuple[str | int, ...]


def yaml_with_lines(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML and map every field path to its line, so a validation error can say where
    it is (`rules.yaml:17 authority.sql.seniorities[0]`); a key set twice is an error."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise RulesError(source, [RuleProblem(line, "", f"not valid YAML: {exc}")]) from None
    lines: dict[Loc, int] = {}
    if node is not None:
        try:
            _line_index(node, (), lines)
        except RulesError as exc:
            raise RulesError(source, exc.problems) from None
    return data, lines


def line_of(loc: Loc, lines: dict[Loc, int]) -> int | None:
    """The line of `loc`, or of its nearest enclosing field that has one."""
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def validation_problems(exc: ValidationError, lines: dict[Loc, int], prefix: Loc = ()
                        ) -> list[RuleProblem]:
    """pydantic errors as line + field + message; `prefix` places a sub-document (e.g. the
    third rep of a roster file) inside the file."""
    problems = []
    for err in exc.errors():
        loc = prefix + tuple(
            p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function"))
        )
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling against the default rules file)"
        elif err["type"] == "string_type" and isinstance(err.get("input"), bool):
            message += ' (YAML reads a bare NO, yes, on or off as a boolean: quote it, "NO")'
        elif (err["type"] == "string_type" and isinstance(err.get("input"), int)
              and any(str(p).endswith("working_hours") for p in loc)):
            message += ' (YAML reads an unquoted 17:00 as the number 1020: quote times, "17:00")'
        problems.append(RuleProblem(line_of(loc, lines), field_path(loc), message))
    return problems


def parse_rules(text: str, source: str = "<rules>") -> Rules:
    """Validate rules text; raises RulesError naming the line and field of every problem."""
    data, lines = yaml_with_lines(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RulesError(source, [RuleProblem(1, "", "the rules file must be a mapping")])
    try:
        rules = Rules.model_validate(data)
    except ValidationError as exc:
        raise RulesError(source, validation_problems(exc, lines)) from None
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    rules._version = f"{rules.name}@{digest}"
    return rules


def load_rules(path: str | Path | None = None) -> Rules:
    """Load a rules file, or the shipped defaults when `path` is None."""
    if path is None:
        text = default_rules_text()
        return parse_rules(text, "default_rules.yaml")
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        problem = RuleProblem(None, "", f"cannot read: {exc.strerror}")
        raise RulesError(str(file), [problem]) from None
    return parse_rules(text, str(file))


def default_rules_text() -> str:
    return (resources.files("router.domain") / "default_rules.yaml").read_text(encoding="utf-8")
