"""`leadrouter roster apply FILE [--dry-run]` and `leadrouter roster export`: the reps and
named accounts as one reviewed YAML file instead of hand-produced Kafka records.

Each section of the file is the whole of its topic: a rep (or account) on the topic but not in
`reps` (`named_accounts`) is removed with a tombstone (SPEC §2.1); a section left out of the
file leaves its topic alone, so accounts and reps can be kept in separate files.

Every entry is validated with the wire models the worker reads (router.domain.events.Rep /
NamedAccount), so what passes here is what the router will accept;
errors name the line and the field, as the rules file's do. Unlike the worker, which ignores
unknown fields (producers may be newer than it), the file refuses them: in a hand-edited file
an unknown field is a typo (`max_open_lead: 5`) that would silently keep the default.

`apply` reads what the compacted topics hold, prints what changes (added, changed with the
fields, removed) and publishes only those records: applying the same file twice writes nothing.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar

import orjson
import yaml
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, ValidationError

from router.adapters.compacted_reader import CompactedTopicReader
from router.adapters.topics import Topics, connect_admin, ensure_topics
from router.domain.events import NamedAccount, Rep
from router.domain.rules import (
    Loc,
    RuleProblem,
    RulesError,
    field_path,
    line_of,
    validation_problems,
    yaml_with_lines,
)
from router.logs import mask_email, mask_name
from router.settings import Settings, bootstrap_servers

REPS, ACCOUNTS = "reps", "named_accounts"
READ_TIMEOUT_SECONDS = 30.0

M = TypeVar("M", Rep, NamedAccount)


class RosterError(RulesError):
    """A roster file that cannot be applied; each problem names the line and the field."""


@dataclass(frozen=True)
class Roster:
    """None: the section is not in the file (its topic is left alone)."""

    reps: dict[str, Rep] | None = None
    accounts: dict[str, NamedAccount] | None = None


def _entries(data: dict[str, Any], section: str, model: type[M], id_field: str,
             lines: dict[Loc, int], problems: list[RuleProblem]) -> dict[str, M] | None:
    if section not in data:
        return None
    items = data[section]
    if items is None:  # `reps:` with nothing under it: an empty list
        return {}
    if not isinstance(items, list):
        problems.append(RuleProblem(line_of((section,), lines), section,
                                    f"must be a list of entries, each with {id_field}"))
        return {}
    out: dict[str, M] = {}
    first_line: dict[str, int | None] = {}
    for i, item in enumerate(items):
        loc: Loc = (section, i)
        if not isinstance(item, dict):
            problems.append(RuleProblem(line_of(loc, lines), field_path(loc),
                                        f"must be a mapping with {id_field}"))
            continue
        raw_id = item.get(id_field)
        if isinstance(raw_id, str):
            ident = raw_id.strip().lower() if model is NamedAccount else raw_id.strip()
            if ident in first_line:
                problems.append(RuleProblem(
                    line_of((*loc, id_field), lines), field_path((*loc, id_field)),
                    f"{raw_id!r} is listed twice (first on line {first_line[ident]})"))
                continue
            first_line[ident] = line_of(loc, lines)
        unknown = sorted(str(k) for k in item if k not in model.model_fields)
        for name in unknown:
            problems.append(RuleProblem(
                line_of((*loc, name), lines), field_path((*loc, name)),
                f"unknown field (a {model.__name__} has: {', '.join(model.model_fields)})"))
        try:
            entry = model.model_validate(item)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, lines, loc))
            continue
        if unknown:
            continue
        if isinstance(entry, NamedAccount):  # leads' domains are compared in lower case
            entry = entry.model_copy(update={"account_domain": entry.account_domain.lower()})
        out[str(getattr(entry, id_field))] = entry
    return out


def parse_roster(text: str, source: str = "<roster>") -> Roster:
    """Validate a roster file; raises RosterError naming the line and field of each problem."""
    try:
        data, lines = yaml_with_lines(text, source)
    except RulesError as exc:
        raise RosterError(source, exc.problems) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RosterError(source, [RuleProblem(1, "", f"must be a mapping with {REPS} and"
                                                      f" {ACCOUNTS}")])
    problems: list[RuleProblem] = [
        RuleProblem(line_of((str(k),), lines), str(k),
                    f"unknown section (a roster file has {REPS} and {ACCOUNTS})")
        for k in data if k not in (REPS, ACCOUNTS)
    ]
    reps = _entries(data, REPS, Rep, "rep_id", lines, problems)
    accounts = _entries(data, ACCOUNTS, NamedAccount, "account_domain", lines, problems)
    # references inside the file: the file is the whole roster, so a missing rep is removed
    for i, item in enumerate(data.get(ACCOUNTS) or []):
        owner = item.get("owner_rep_id") if isinstance(item, dict) else None
        if isinstance(owner, str) and reps is not None and owner not in reps:
            loc: Loc = (ACCOUNTS, i, "owner_rep_id")
            problems.append(RuleProblem(line_of(loc, lines), field_path(loc),
                                        f"{owner!r} is not a rep in this file"))
    for i, item in enumerate(data.get(REPS) or []):
        if not isinstance(item, dict) or not isinstance(item.get("out_of_office"), list):
            continue
        for j, window in enumerate(item["out_of_office"]):
            backup = window.get("backup_rep_id") if isinstance(window, dict) else None
            if isinstance(backup, str) and reps is not None and backup not in reps:
                loc = (REPS, i, "out_of_office", j, "backup_rep_id")
                problems.append(RuleProblem(line_of(loc, lines), field_path(loc),
                                            f"{backup!r} is not a rep in this file"))
    if problems:
        raise RosterError(source, sorted(problems, key=lambda p: p.line or 0))
    return Roster(reps, accounts)


def load_roster(path: str | Path) -> Roster:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise RosterError(str(file), [RuleProblem(None, "", f"cannot read: {exc.strerror}")]
                          ) from None
    return parse_roster(text, str(file))


# --------------------------------------------------------------------------------------------
# Diff
# --------------------------------------------------------------------------------------------

Kind = Literal["added", "changed", "removed"]


@dataclass(frozen=True)
class Invalid:
    """A record on the topic that the worker refuses (it ignores it); apply replaces it."""

    error: str


@dataclass(frozen=True)
class Change:
    kind: Kind
    key: str
    fields: tuple[str, ...] = ()  # for "changed": the fields that differ
    value: BaseModel | None = None  # what to publish; None: a tombstone
    detail: str = ""


@dataclass
class RosterDiff:
    reps: list[Change] = field(default_factory=list)
    accounts: list[Change] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.reps and not self.accounts

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: {kind: sum(1 for c in changes if c.kind == kind)
                       for kind in ("added", "changed", "removed")}
                for name, changes in (("reps", self.reps), ("named_accounts", self.accounts))}

    def render(self) -> str:
        lines = []
        for label, changes in (("rep", self.reps), ("named account", self.accounts)):
            for c in changes:
                sign = {"added": "+", "changed": "~", "removed": "-"}[c.kind]
                text = f"  {sign} {label} {c.key}: {c.kind}"
                if c.detail:
                    text += f" ({c.detail})"
                lines.append(text)
        counts = self.counts()
        lines.append("  " + "; ".join(
            f"{name.replace('_', ' ')}: " + ", ".join(f"{n} {k}" for k, n in c.items())
            for name, c in counts.items()))
        return "\n".join(lines)


_PERSONAL = {"name": mask_name, "email": mask_email}


def _show(name: str, value: Any) -> str:
    """A changed value for the terminal; names and emails masked like in the logs."""
    if name in _PERSONAL and (isinstance(value, str) or value is None):
        return repr(_PERSONAL[name](value))
    text = orjson.dumps(value).decode()
    return text if len(text) <= 60 else text[:57] + "..."


def _diff(current: Mapping[str, BaseModel | Invalid], wanted: Mapping[str, BaseModel]
          ) -> list[Change]:
    out: list[Change] = []
    for key in sorted(set(current) | set(wanted)):
        old, new = current.get(key), wanted.get(key)
        if new is None:
            out.append(Change("removed", key))
        elif old is None:
            out.append(Change("added", key, value=new))
        elif isinstance(old, Invalid):
            out.append(Change("changed", key, value=new,
                              detail=f"the record held is invalid: {old.error}"))
        else:
            before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
            fields = tuple(f for f in after if before.get(f) != after.get(f))
            if fields:
                detail = ", ".join(f"{f} {_show(f, before.get(f))} -> {_show(f, after.get(f))}"
                                   for f in fields)
                out.append(Change("changed", key, fields, new, detail))
    return out


@dataclass
class CurrentRoster:
    reps: dict[str, Rep | Invalid] = field(default_factory=dict)
    accounts: dict[str, NamedAccount | Invalid] = field(default_factory=dict)


def diff_roster(current: CurrentRoster, wanted: Roster) -> RosterDiff:
    return RosterDiff(
        _diff(current.reps, wanted.reps) if wanted.reps is not None else [],
        _diff(current.accounts, wanted.accounts) if wanted.accounts is not None else [])


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------


def _parser(model: type[M]) -> Any:
    def parse(_key: bytes, value: bytes) -> M | Invalid:
        try:
            return model.model_validate_json(value)
        except ValidationError as exc:
            return Invalid(f"{exc.error_count()} error(s), first: {exc.errors()[0]['msg']}")
    return parse


async def _read(settings: Settings, topic: str, model: type[M], timeout: float
                ) -> dict[str, M | Invalid]:
    reader: CompactedTopicReader[M | Invalid] = CompactedTopicReader(
        bootstrap_servers(settings.broker), topic, _parser(model),
        client_kwargs=settings.kafka_client_kwargs())
    task = asyncio.create_task(reader.run())
    try:
        done, _ = await asyncio.wait({task, asyncio.create_task(reader.caught_up.wait())},
                                     timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises what stopped the reader
        if not reader.caught_up.is_set():
            raise TimeoutError(f"could not read {topic} to its end within {timeout:.0f} s")
        return dict(reader.values)
    finally:
        reader.stop()
        await asyncio.gather(task, return_exceptions=True)


async def _existing_topics(settings: Settings) -> set[str]:
    admin = await connect_admin(settings)
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def read_current(settings: Settings, topics: Topics,
                       timeout: float = READ_TIMEOUT_SECONDS) -> CurrentRoster:
    """What the compacted topics hold now (a topic not created yet holds nothing)."""
    existing = await _existing_topics(settings)
    current = CurrentRoster()
    if topics.reps in existing:
        current.reps = await _read(settings, topics.reps, Rep, timeout)
    if topics.accounts in existing:
        current.accounts = await _read(settings, topics.accounts, NamedAccount, timeout)
    return current


def _value(model: BaseModel) -> bytes:
    """What the file said (unset fields stay unset: the router applies its own defaults)."""
    return orjson.dumps(model.model_dump(mode="json", exclude_unset=True))


async def publish(settings: Settings, topics: Topics, diff: RosterDiff) -> int:
    """Upserts and tombstones; reps are added before the accounts that name them and removed
    after. Waits for every acknowledgement. Returns the number of records written."""
    rep_upserts = [c for c in diff.reps if c.value is not None]
    rep_removals = [c for c in diff.reps if c.value is None]
    batches = ((topics.reps, rep_upserts), (topics.accounts, diff.accounts),
               (topics.reps, rep_removals))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.broker),
                                acks="all", linger_ms=5, **settings.kafka_client_kwargs())
    await producer.start()
    written = 0
    try:
        for topic, changes in batches:
            pending = [await producer.send(topic, _value(c.value) if c.value else None,
                                           key=c.key.encode()) for c in changes]
            await asyncio.gather(*pending)
            written += len(pending)
    finally:
        await producer.stop()
    return written


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------

EXPORT_HEADER = """\
# leadrouter roster: every rep (routing.reps) and named account (routing.accounts).
# Edit, then `leadrouter roster apply FILE --dry-run` to see the changes, and without
# --dry-run to publish them. An entry left out is removed. Fields and defaults: SPEC §2.1.
"""


class _ExportDumper(yaml.SafeDumper):
    """PyYAML writes NEL (U+0085) raw when allow_unicode is on, and reads it back as a line
    break: a name containing one would not survive export and apply (hypothesis found it).
    Strings with a YAML line-break character are written double-quoted, where it is escaped."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if any(c in value for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ExportDumper.add_representer(str, _represent_str)


def to_yaml(roster: Roster | CurrentRoster) -> str:
    """The roster as a file `apply` accepts; defaults left out, so it reads like a hand-
    written one. Invalid records on the topics are left out too (the worker ignores them)."""
    def dump(values: Mapping[str, BaseModel | Invalid] | None) -> list[dict[str, Any]]:
        return [v.model_dump(mode="json", exclude_defaults=True)
                for _, v in sorted((values or {}).items()) if not isinstance(v, Invalid)]

    data = {REPS: dump(roster.reps), ACCOUNTS: dump(roster.accounts)}
    return EXPORT_HEADER + yaml.dump(data, Dumper=_ExportDumper, sort_keys=False,
                                     allow_unicode=True, default_flow_style=None, width=100)


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


async def apply_roster(settings: Settings, roster: Roster, *, dry_run: bool,
                       out: TextIO = sys.stdout) -> RosterDiff:
    topics = Topics.with_prefix(settings.topic_prefix)
    if not dry_run:  # the roster may come before the first worker: create the topics
        await ensure_topics(settings, topics)
    current = await read_current(settings, topics)
    diff = diff_roster(current, roster)
    print(f"roster diff against {topics.reps} and {topics.accounts}:", file=out)
    print(diff.render(), file=out)
    if dry_run:
        print("dry run: nothing written", file=out)
    elif diff.empty:
        print("nothing to change", file=out)
    else:
        written = await publish(settings, topics, diff)
        print(f"published {written} record(s)", file=out)
    return diff


async def export_roster(settings: Settings) -> str:
    return to_yaml(await read_current(settings, Topics.with_prefix(settings.topic_prefix)))


def settings_for(broker: str | None, topic_prefix: str | None) -> Settings:
    """Connection settings from LEADROUTER_* (security included), flags winning."""
    from router.settings import from_env

    base = from_env()
    return replace(base, broker=broker if broker is not None else base.broker,
                   topic_prefix=topic_prefix if topic_prefix is not None else base.topic_prefix)


def run_apply(path: str, broker: str | None, topic_prefix: str | None, dry_run: bool) -> int:
    try:
        roster = load_roster(path)
    except RosterError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    try:
        asyncio.run(apply_roster(settings_for(broker, topic_prefix), roster, dry_run=dry_run))
    except (OSError, TimeoutError, RuntimeError) as exc:
        print(f"leadrouter roster apply: {exc}", file=sys.stderr)
        return 2
    return 0


def run_export(broker: str | None, topic_prefix: str | None, out: str | None) -> int:
    try:
        text = asyncio.run(export_roster(settings_for(broker, topic_prefix)))
    except (OSError, TimeoutError, RuntimeError) as exc:
        print(f"leadrouter roster export: {exc}", file=sys.stderr)
        return 2
    if out is None or out == "-":
        sys.stdout.write(text)
    else:
        Path(out).write_text(text, encoding="utf-8")
    return 0
