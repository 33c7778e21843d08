"""The range options of `export`, `simulate` and `report`: a command's default --since applies
only when neither --since nor --from is given (an argparse default made --from unusable: it
always met a "given" --since and was refused as both)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from router.cli import _history_since, build_parser, main
from router.tools.history import FORMAT_VERSION, HistoryError, TimeRange, time_range

FROM = "2026-03-01T00:00:00Z"
FROM_TS = datetime.fromisoformat(FROM).timestamp()
DAY = 86400.0
# each command with the arguments it requires and its default range
COMMANDS = [(["export"], 30), (["simulate", "--rules", "r.yaml"], 90), (["report"], 7)]


def resolved_range(argv: list[str], now: float) -> TimeRange:
    """What the command's run_* would be asked for (it calls time_range with these)."""
    args = build_parser().parse_args(argv)
    return time_range(_history_since(args), args.start, args.end, now=now)


@pytest.mark.parametrize(("command", "days"), COMMANDS)
def test_from_alone_sets_the_start(command: list[str], days: int) -> None:
    assert resolved_range([*command, "--from", FROM], now=FROM_TS + 400 * DAY) == TimeRange(
        FROM_TS, None)


@pytest.mark.parametrize(("command", "days"), COMMANDS)
def test_since_alone_counts_back_from_now(command: list[str], days: int) -> None:
    now = FROM_TS + 400 * DAY
    assert resolved_range([*command, "--since", "12h"], now) == TimeRange(now - DAY / 2, None)


@pytest.mark.parametrize(("command", "days"), COMMANDS)
def test_neither_gives_the_commands_default(command: list[str], days: int) -> None:
    now = FROM_TS + 400 * DAY
    assert resolved_range(command, now) == TimeRange(now - days * DAY, None)
    to = datetime.fromtimestamp(now - DAY, UTC)  # --to alone keeps the default start
    assert resolved_range([*command, "--to", to.isoformat()], now) == TimeRange(
        now - days * DAY, to.timestamp())


@pytest.mark.parametrize(("command", "days"), COMMANDS)
def test_both_given_is_refused(command: list[str], days: int) -> None:
    with pytest.raises(HistoryError, match="give either --since or --from, not both"):
        resolved_range([*command, "--since", "7d", "--from", FROM], now=time.time())


@pytest.mark.parametrize("command", ["simulate", "report"])
def test_the_help_says_when_the_default_applies(command: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "unless --from is given" in " ".join(capsys.readouterr().out.split())


def empty_history(tmp_path: Path) -> str:
    path = tmp_path / "history.ndjson"
    path.write_bytes(orjson.dumps({"leadrouter_history": FORMAT_VERSION}) + b"\n")
    return str(path)


def rules_file(tmp_path: Path) -> str:
    from router.domain import rules

    shipped = Path(rules.__file__).with_name("default_rules.yaml")
    path = tmp_path / "candidate.yaml"
    path.write_text(shipped.read_text())
    return str(path)


def test_simulate_from_runs_end_to_end(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--rules", rules_file(tmp_path), "--history",
                 empty_history(tmp_path), "--from", FROM, "--json", "--quiet",
                 "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert orjson.loads(captured.out)["range"]["from"].startswith("2026-03-01T00:00:00")


def test_report_with_both_says_so_and_exits_2(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", "--history", empty_history(tmp_path), "--since", "7d",
                 "--from", FROM])
    assert code == 2
    assert "leadrouter report: give either --since or --from, not both" in capsys.readouterr().err
