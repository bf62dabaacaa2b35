"""`livetwin backtest`: the summary alone on stdout, the report kept and saved, and a bad
candidate refused with its fix (exit 2, no stack trace)."""

from __future__ import annotations

import json

from backtest_support import record
from typer.testing import CliRunner

from livetwin.cli import app
from livetwin.platform import Platform, Settings

WINDOW = ("--from", "2026-11-22T11:00:00Z", "--to", "2026-11-22T12:30:00Z")


def test_backtest_prints_the_summary_and_saves_the_report(tmp_path):
    data = tmp_path / "d"
    with Platform(data, settings=Settings(run_schedules=False)) as p:
        record(p)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(
        "derived:\n  temp_avg: avg(temp, '30m')\nrules:\n  hot: {when: temp > 80, for: 5m}\n"
    )
    saved, csv = tmp_path / "report.json", tmp_path / "report.csv"
    result = CliRunner().invoke(
        app,
        ["backtest", "oven", "--candidate", str(candidate), *WINDOW, "--data", str(data),
         "--report", str(saved), "--csv", str(csv)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["outputs"]["temp_avg"]["twins_affected"] == 12
    assert summary["rules"]["hot"]["would_raise"] == 3
    assert "back-testing" in result.stderr
    report = json.loads(saved.read_text())
    assert report["id"] == summary["backtest"] and report["series"]
    assert csv.read_text().startswith("kind,name,twin,time,value,detail")
    with Platform(data, settings=Settings(run_schedules=False)) as p:  # kept for the API
        assert p.backtests.report(summary["backtest"])["type"] == "oven"


def test_backtest_refuses_a_candidate_that_does_not_compile(tmp_path):
    data = tmp_path / "d"
    with Platform(data, settings=Settings(run_schedules=False)) as p:
        record(p)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text("derived:\n  x: temp +* 2\n")
    result = CliRunner().invoke(
        app, ["backtest", "oven", "--candidate", str(candidate), *WINDOW, "--data", str(data)]
    )
    assert result.exit_code == 2, result.output
    assert "fix:" in result.output and "Traceback" not in result.output
