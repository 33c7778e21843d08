"""The roster file (router.tools.roster): validated with the wire models, errors at the line
and field, a diff against what the topics hold, and an export that `apply` reads back."""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from router.domain.events import NamedAccount, Rep
from router.tools.roster import (
    CurrentRoster,
    Invalid,
    Roster,
    RosterError,
    diff_roster,
    parse_roster,
    to_yaml,
)

DEMO = (resources.files("router") / "harness/demo_roster.yaml").read_text(encoding="utf-8")


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(RosterError) as caught:
        parse_roster(text, "roster.yaml")
    return [(p.line, p.field, p.message) for p in caught.value.problems]


def test_the_demo_roster_is_valid_and_holds_every_entry_of_the_file() -> None:
    roster = parse_roster(DEMO, "demo_roster.yaml")
    raw = yaml.safe_load(DEMO)
    assert roster.reps is not None and roster.accounts is not None
    assert list(roster.reps) == [r["rep_id"] for r in raw["reps"]]
    assert list(roster.accounts) == [a["account_domain"] for a in raw["named_accounts"]]
    for rep in raw["reps"]:  # what the worker would read from the topic is what the file says
        assert roster.reps[rep["rep_id"]] == Rep.model_validate(rep)


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("reps:\n  - rep_id: R-1\n    max_open_lead: 5\n",
                 [(3, "reps[0].max_open_lead", "unknown field")], id="typo-in-a-field"),
    pytest.param("reps:\n  - rep_id: R-1\n  - rep_id: R-2\n    weight: 0\n",
                 [(4, "reps[1].weight", "greater than or equal to 1")], id="out-of-range"),
    pytest.param("reps:\n  - rep_id: R-1\n    working_hours: {mon: [09:00, 17:00]}\n",
                 [(3, "reps[0].working_hours.mon[1]", 'quote times, "17:00"')],
                 id="unquoted-time"),
    pytest.param("reps:\n  - rep_id: R-1\n    timezone: Mars/Olympus\n",
                 [(3, "reps[0].timezone", "unknown time zone")], id="time-zone"),
    pytest.param("reps:\n  - rep_id: R-1\n    out_of_office:\n"
                 "      - {start: 2026-12-20T00:00:00, end: 2027-01-04T00:00:00+01:00}\n",
                 [(4, "reps[0].out_of_office[0].start", "no UTC offset")], id="naive-time"),
    pytest.param("reps:\n  - rep_id: R-1\n  - rep_id: R-1\n",
                 [(3, "reps[1].rep_id", "listed twice (first on line 2)")], id="duplicate-rep"),
    pytest.param("named_accounts:\n  - {account_domain: a.com, owner_rep_id: R-1}\n"
                 "  - {account_domain: A.com, owner_rep_id: R-1}\n",
                 [(3, "named_accounts[1].account_domain", "listed twice")],
                 id="duplicate-domain-in-another-case"),
    pytest.param("reps:\n  - rep_id: R-1\nnamed_accounts:\n"
                 "  - {account_domain: a.com, owner_rep_id: R-9}\n",
                 [(4, "named_accounts[0].owner_rep_id", "'R-9' is not a rep in this file")],
                 id="owner-not-on-the-roster"),
    pytest.param("reps:\n  - rep_id: R-1\n    out_of_office:\n"
                 "      - {start: 2026-12-20T00:00:00Z, end: 2027-01-04T00:00:00Z,"
                 " backup_rep_id: R-2}\n",
                 [(4, "reps[0].out_of_office[0].backup_rep_id", "not a rep in this file")],
                 id="backup-not-on-the-roster"),
    pytest.param("reps:\n  - rep_id: R-1\n    rep_id: R-2\n",
                 [(3, "reps[0].rep_id", "set twice")], id="key-set-twice"),
    pytest.param("teams: []\n", [(1, "teams", "unknown section")], id="unknown-section"),
    pytest.param("reps: {R-1: {}}\n", [(1, "reps", "must be a list")], id="not-a-list"),
    pytest.param("reps:\n  - R-1\n", [(2, "reps[0]", "must be a mapping")], id="not-a-mapping"),
    pytest.param("- rep_id: R-1\n", [(1, "", "must be a mapping")], id="top-level-list"),
    pytest.param("reps: [\n", [(None, "", "not valid YAML")], id="bad-yaml"),
])
def test_a_bad_roster_names_the_line_and_the_field(
        text: str, expected: list[tuple[int | None, str, str]]) -> None:
    got = problems(text)
    assert len(got) == len(expected), got
    for (line, field, message), (want_line, want_field, fragment) in zip(got, expected,
                                                                          strict=True):
        assert field == want_field
        assert fragment in message
        if want_line is not None:
            assert line == want_line
        else:
            assert line is not None  # the YAML parser's mark


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    text = "reps:\n  - rep_id: R-1\n    weight: 0\n  - rep_id: R-2\n    pool: [NA]\n"
    got = problems(text)
    assert [(line, field) for line, field, _ in got] == [(3, "reps[0].weight"),
                                                        (5, "reps[1].pool")]
    assert str(RosterError("roster.yaml", [])) == ""


def test_a_section_left_out_is_not_managed_an_empty_one_removes_everything() -> None:
    only_accounts = parse_roster("named_accounts:\n  - {account_domain: a.com,"
                                 " owner_rep_id: R-1}\n")
    assert only_accounts.reps is None  # owner references cannot be checked: not an error
    current = CurrentRoster(reps={"R-1": Rep(rep_id="R-1")})
    assert diff_roster(current, only_accounts).reps == []
    empty = parse_roster("reps: []\n")
    assert [(c.kind, c.key) for c in diff_roster(current, empty).reps] == [("removed", "R-1")]


def test_domains_are_stored_in_lower_case() -> None:
    roster = parse_roster("named_accounts:\n  - {account_domain: BigCo.COM, owner_rep_id: R-1,"
                          " account_name: BigCo}\n")
    assert roster.accounts is not None
    assert list(roster.accounts) == ["bigco.com"]
    assert roster.accounts["bigco.com"].account_domain == "bigco.com"


# --------------------------------------------------------------------------------------------
# diff
# --------------------------------------------------------------------------------------------


def test_the_diff_lists_added_changed_with_fields_and_removed() -> None:
    current = CurrentRoster(
        reps={"R-1": Rep(rep_id="R-1", pools=["NA"], max_open_leads=30),
              "R-2": Rep(rep_id="R-2", name="Tom Baker", email="tom@vendor.example"),
              "R-3": Rep(rep_id="R-3"),
              "R-4": Invalid("1 error(s), first: Field required")},
        accounts={"a.com": NamedAccount(account_domain="a.com", owner_rep_id="R-1")})
    wanted = parse_roster(
        "reps:\n"
        "  - {rep_id: R-1, pools: [NA], max_open_leads: 10}\n"
        "  - {rep_id: R-2, name: Tom Baker, email: tom@vendor.example, active: true}\n"
        "  - {rep_id: R-4}\n"
        "  - {rep_id: R-5, pools: [EMEA]}\n"
        "named_accounts:\n"
        "  - {account_domain: a.com, owner_rep_id: R-1}\n")
    diff = diff_roster(current, wanted)
    assert [(c.kind, c.key, c.fields) for c in diff.reps] == [
        ("changed", "R-1", ("max_open_leads",)),
        # `active: true` spelt out is the default: not a change
        ("removed", "R-3", ()),
        ("changed", "R-4", ()),  # an invalid record is replaced
        ("added", "R-5", ()),
    ]
    assert diff.accounts == []
    assert diff.counts() == {"reps": {"added": 1, "changed": 2, "removed": 1},
                             "named_accounts": {"added": 0, "changed": 0, "removed": 0}}
    text = diff.render()
    assert "~ rep R-1: changed (max_open_leads 30 -> 10)" in text
    assert "- rep R-3: removed" in text and "+ rep R-5: added" in text
    assert "the record held is invalid" in text
    assert [c.value for c in diff.reps if c.kind == "removed"] == [None]  # a tombstone


def test_an_unchanged_roster_has_an_empty_diff() -> None:
    roster = parse_roster(DEMO)
    assert roster.reps is not None and roster.accounts is not None
    current = CurrentRoster(reps=dict(roster.reps), accounts=dict(roster.accounts))
    assert diff_roster(current, roster).empty


def test_names_and_emails_are_masked_in_the_diff() -> None:
    current = CurrentRoster(reps={"R-1": Rep(rep_id="R-1", name="Maya Chen",
                                             email="maya.chen@vendor.example")})
    wanted = parse_roster("reps:\n  - {rep_id: R-1, name: Maya Smith,"
                          " email: maya.smith@vendor.example}\n")
    text = diff_roster(current, wanted).render()
    assert "Chen" not in text and "Smith" not in text and "maya." not in text
    assert "name 'M. C.' -> 'M. S.'" in text
    assert "email 'm***@vendor.example' -> 'm***@vendor.example'" in text


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


def test_the_export_of_the_demo_roster_reads_back_the_same() -> None:
    roster = parse_roster(DEMO)
    again = parse_roster(to_yaml(roster), "export.yaml")
    assert again == roster


def test_the_export_leaves_out_invalid_records() -> None:
    current = CurrentRoster(reps={"R-1": Rep(rep_id="R-1"), "R-2": Invalid("bad")})
    assert parse_roster(to_yaml(current)).reps == {"R-1": Rep(rep_id="R-1")}


ids = st.text(st.sampled_from("ABCRX-0123456789"), min_size=1, max_size=8)
tricky = st.sampled_from(["NO", "yes", "on", "17:00", "0x1F", "1e3", "null", "~", "- x",
                          "Ana: Ruiz", "#hash", "O'Brien", "Zoë"])
hours = st.sampled_from([("09:00", "17:00"), ("00:00", "24:00"), ("08:30", "12:00")])
reps = st.builds(
    dict,
    rep_id=ids,
    name=st.one_of(st.none(), tricky, st.text(max_size=20)),
    active=st.booleans(),
    pools=st.lists(st.one_of(tricky, st.sampled_from(["NA", "EMEA", "global"])), max_size=3),
    languages=st.lists(st.sampled_from(["en", "de", "no", "on"]), max_size=3),
    max_open_leads=st.integers(0, 500),
    weight=st.integers(1, 100),
    timezone=st.sampled_from(["UTC", "Europe/Oslo", "America/Sao_Paulo"]),
    working_hours=st.dictionaries(st.sampled_from(["mon", "tue", "sat"]), hours, min_size=1),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(reps, max_size=6, unique_by=lambda r: r["rep_id"]))
def test_any_valid_roster_survives_export_and_parse(raw: list[dict[str, Any]]) -> None:
    """YAML's traps (NO, 17:00, 1e3, a leading dash) must not change a value on the way."""
    roster = Roster(reps={r["rep_id"]: Rep.model_validate(r) for r in raw}, accounts={})
    assert parse_roster(to_yaml(roster), "export.yaml") == roster


def test_a_name_with_a_yaml_line_break_character_survives_export() -> None:
    """Found by the round-trip property: PyYAML wrote NEL raw and read it back as a space."""
    from router.tools.roster import to_yaml

    names = ["0\x850", "a\u2028b", "c\u2029d", "Zoë Ärger"]
    raw = [{"rep_id": f"R-{i}", "name": name} for i, name in enumerate(names)]
    roster = parse_roster(yaml.safe_dump({"reps": raw}, allow_unicode=False), "r.yaml")
    back = parse_roster(to_yaml(roster), "export.yaml")
    assert [back.reps[f"R-{i}"].name for i in range(len(names))] == names
