"""The rules file (SPEC §3): defaults, versioning, line-precise errors, `leadrouter rules check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.cli import main
from router.domain.events import BuyingRole, Seniority
from router.domain.rules import (
    Rules,
    RulesError,
    default_rules_text,
    load_rules,
    parse_rules,
)


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, "bad.yaml")
    return [(p.line, p.field, p.message) for p in caught.value.problems]


# --------------------------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------------------------


def test_defaults_are_the_spec_numbers() -> None:
    r = load_rules()
    assert r.name == "default"
    assert (r.fit.employees_min, r.fit.employees_max) == (50, 2000)
    assert r.fit.industries == {"saas", "software", "financial_services", "business_services"}
    assert r.authority.mql.min_seniority is Seniority.MANAGER
    assert r.authority.mql.buying_roles == {BuyingRole.INFLUENCER, BuyingRole.DECISION_MAKER}
    assert r.authority.sql.seniorities == {Seniority.DIRECTOR, Seniority.VP, Seniority.C_LEVEL}
    assert r.authority.sql.buying_roles == {BuyingRole.DECISION_MAKER}
    assert r.windows.engagement_days == 30
    assert r.windows.pricing_pair_days == 7
    assert (r.engagement.mql_min_touchpoints, r.engagement.sql_min_touchpoints) == (2, 4)
    assert r.engagement.sql_requires_intent is True
    assert r.intent.sql_min_pricing_views == 2
    assert r.intent.quiz_talk_to_sales_score == 80
    assert r.input.max_future_seconds == 300
    assert r.input.max_value_bytes == 1024 * 1024
    w = r.score.weights
    assert w.fit + w.authority + w.engagement + w.intent == 100
    assert r.window_seconds == 30 * 86400
    assert r.pricing_pair_seconds == 7 * 86400


def test_default_file_agrees_with_the_model_defaults() -> None:
    # the shipped YAML and the pydantic defaults must not drift apart
    assert load_rules().model_dump() == Rules().model_dump()


def test_an_empty_file_means_all_defaults() -> None:
    rules = parse_rules("", "empty.yaml")
    assert rules.model_dump() == Rules().model_dump()
    assert rules.version.startswith("default@")


# --------------------------------------------------------------------------------------------
# rules_version
# --------------------------------------------------------------------------------------------


def test_version_is_name_and_content_hash() -> None:
    text = default_rules_text()
    a = parse_rules(text)
    assert a.version == load_rules().version
    assert a.version.startswith("default@") and len(a.version.split("@")[1]) == 12
    assert parse_rules(text).version == a.version  # deterministic


def test_version_changes_with_content() -> None:
    text = default_rules_text()
    base = parse_rules(text).version
    edited = parse_rules(text.replace("employees_min: 50", "employees_min: 60")).version
    renamed = parse_rules(text.replace("name: default", "name: emea-2027")).version
    assert edited != base and edited.startswith("default@")
    assert renamed.startswith("emea-2027@")
    assert renamed.split("@")[1] != base.split("@")[1]


def test_version_is_not_part_of_the_dumped_settings() -> None:
    assert "version" not in load_rules().model_dump()


# --------------------------------------------------------------------------------------------
# Errors name the line and the field
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        pytest.param(
            "name: x\nfit:\n  employees_minimum: 10\n",
            3, "fit.employees_minimum", "unknown setting", id="unknown-key",
        ),
        pytest.param(
            "windows:\n  engagment_days: 30\n",
            2, "windows.engagment_days", "unknown setting", id="misspelt-key",
        ),
        pytest.param(
            "authority:\n  sql:\n    seniorities:\n      - director\n      - boss\n",
            5, "authority.sql.seniorities[1]", "'director'", id="wrong-enum-in-block-list",
        ),
        pytest.param(
            "# comment\n\nauthority:\n  mql:\n    buying_roles: [influencer, chief]\n",
            5, "authority.mql.buying_roles[1]", "'decision_maker'", id="wrong-enum-in-flow-list",
        ),
        pytest.param(
            "authority:\n  mql:\n    min_seniority: boss\n",
            3, "authority.mql.min_seniority", "'manager'", id="wrong-enum-scalar",
        ),
        pytest.param(
            "engagement:\n  mql_min_touchpoints: two\n",
            2, "engagement.mql_min_touchpoints", "valid integer", id="wrong-type-int",
        ),
        pytest.param(
            "fit:\n  industries:\n    - saas\n    - 5\n",
            4, "fit.industries[1]", "valid string", id="wrong-type-in-list",
        ),
        pytest.param(
            "fit: 5\n", 1, "fit", "valid dictionary", id="section-not-a-mapping",
        ),
        pytest.param(
            "name: x\nscore:\n  weights: {fit: 30, authority: 25, engagement: 25, intent: 25}\n",
            3, "score.weights", "add up to 100, they add up to 105", id="weights-not-100",
        ),
        pytest.param(
            "intent:\n  sql_min_pricing_views: 0\n",
            2, "intent.sql_min_pricing_views", "greater than or equal to 1", id="out-of-range",
        ),
        pytest.param(
            "fit:\n  employees_min: 3000\n",
            1, "fit", "employees_min must not exceed employees_max", id="min-above-max",
        ),
        pytest.param(
            "windows:\n  engagement_days: 5\n  pricing_pair_days: 7\n",
            1, "windows", "pricing_pair_days must not exceed engagement_days",
            id="pair-window-longer-than-window",
        ),
        pytest.param(
            "name: 'has spaces'\n", 1, "name", "should match pattern", id="bad-name",
        ),
    ],
)
def test_a_bad_value_names_its_line_and_field(
    text: str, line: int, field: str, message: str
) -> None:
    (problem,) = problems(text)
    assert problem[:2] == (line, field)
    assert message in problem[2]


def test_every_problem_is_reported_at_once() -> None:
    found = problems("fit:\n  employees_min: -1\nintent:\n  sql_min_pricing_views: 0\n")
    assert [(line, field) for line, field, _ in found] == [
        (2, "fit.employees_min"),
        (4, "intent.sql_min_pricing_views"),
    ]


def test_cross_section_rule_is_reported_with_both_field_names() -> None:
    ((line, field, message),) = problems("engagement:\n  mql_min_touchpoints: 5\n")
    assert (line, field) == (1, "")
    assert "engagement.mql_min_touchpoints" in message
    assert "engagement.sql_min_touchpoints" in message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("fit:\n  employees_min: 50\n   bad: 1\n", 3, id="bad-indent"),
        pytest.param("fit:\n  industries: [saas\nname: x\n", 3, id="unclosed-list"),
        pytest.param("name: x\nfit: {a: 1\n", 3, id="unclosed-mapping-at-eof"),
    ],
)
def test_invalid_yaml_names_its_line(text: str, line: int) -> None:
    ((found_line, field, message),) = problems(text)
    assert found_line == line
    assert field == ""
    assert message.startswith("not valid YAML")


def test_a_file_that_is_not_a_mapping() -> None:
    assert problems("- a\n- b\n") == [(1, "", "the rules file must be a mapping")]


def test_rendered_error_reads_file_line_field_message() -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules("name: x\nfit:\n  employees_minimum: 10\n", "rules/emea.yaml")
    assert str(caught.value).startswith("rules/emea.yaml:3: fit.employees_minimum: unknown setting")


def test_load_rules_reports_an_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RulesError) as caught:
        load_rules(missing)
    (problem,) = caught.value.problems
    assert problem.line is None
    assert "cannot read" in problem.message
    assert str(caught.value).startswith(str(missing))


def test_load_rules_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("name: custom\nfit: {employees_min: 10}\n", encoding="utf-8")
    rules = load_rules(path)
    assert rules.fit.employees_min == 10
    assert rules.fit.employees_max == 2000  # untouched settings keep their defaults
    assert rules.version.startswith("custom@")


# --------------------------------------------------------------------------------------------
# `leadrouter rules check`
# --------------------------------------------------------------------------------------------


def test_cli_rules_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(default_rules_text(), encoding="utf-8")
    assert main(["rules", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"{path}: ok (rules_version {load_rules().version})"
    assert err == ""


def test_cli_rules_check_names_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "name: x\nfit:\n  employees_minimum: 10\nauthority:\n  sql:\n"
        "    seniorities: [director, boss]\n",
        encoding="utf-8",
    )
    assert main(["rules", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"{path}:3: fit.employees_minimum: unknown setting")
    assert lines[1].startswith(f"{path}:6: authority.sql.seniorities[1]: Input should be")


def test_cli_rules_check_invalid_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("fit:\n  employees_min: 50\n   bad: 1\n", encoding="utf-8")
    assert main(["rules", "check", str(path)]) == 1
    assert capsys.readouterr().err.startswith(f"{path}:3: (top level): not valid YAML")


def test_cli_rules_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "missing.yaml"
    assert main(["rules", "check", str(path)]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_cli_rules_check_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["rules", "check"])
    assert exited.value.code == 2
    assert "file" in capsys.readouterr().err
