"""`livetwin backtest`: a candidate type replayed against a data directory's recorded history,
with a progress bar; the summary is printed (JSON on stdout), the full report kept and saved."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from livetwin.backtest.report import to_csv
from livetwin.cli.common import (
    DATA,
    console,
    fail,
    open_platform,
    print_json,
    progress_bar,
    require_data,
)
from livetwin.errors import InvalidInput, LivetwinError
from livetwin.platform import Settings
from livetwin.registry.lineage import new_run_id
from livetwin.spec.safe_yaml import load_yaml


def backtest(
    type_name: str = typer.Argument(..., metavar="TYPE", help="The twin type to back-test."),
    candidate: Path = typer.Option(
        ..., "--candidate", help="YAML/JSON: a patch of the current version, or {spec: {...}}."
    ),
    start: str = typer.Option(..., "--from", help="Window start (ISO 8601 or epoch ms)."),
    end: str = typer.Option(..., "--to", help="Window end, exclusive."),
    warmup: str = typer.Option(None, help="Warm-up before --from (default: longest window)."),
    twin: list[str] = typer.Option(None, "--twin", help="Only these twins (repeatable)."),
    parent: str = typer.Option(None, help="Only the children of this twin."),
    where: str = typer.Option(None, help="Only twins whose current values match."),
    plot: list[str] = typer.Option(None, "--plot", help="Keep these twins' series (repeatable)."),
    report: Path = typer.Option(None, "--report", help="Write the full report here (JSON)."),
    csv: Path = typer.Option(None, "--csv", help="Write the report's findings here (CSV)."),
    data: Path = DATA,
):
    """Replay TYPE's journal between --from and --to under the recorded versions and under the
    candidate, side by side, and print how outputs and alarms would have differed. Nothing
    live changes; the report is kept (GET /api/backtests/{id})."""
    require_data(data)
    try:
        body = load_yaml(candidate.read_bytes(), what="candidate")
    except OSError as exc:
        fail(
            InvalidInput(
                f"cannot read {candidate}: {exc.strerror}",
                field="candidate",
                fix="pass --candidate with a YAML or JSON file",
            )
        )
    except LivetwinError as exc:
        fail(exc)
    if not (isinstance(body, dict) and len(body) == 1 and next(iter(body)) in ("patch", "spec")):
        body = {"patch": body if body is not None else {}}
    twins = {k: v for k, v in {"ids": twin or None, "parent": parent, "where": where}.items() if v}
    request = {
        "type": type_name,
        "candidate": body,
        "from": start,
        "to": end,
        **({"warmup": warmup} if warmup else {}),
        **({"twins": twins} if twins else {}),
        **({"plot": plot} if plot else {}),
    }
    platform = open_platform(data, Settings(run_schedules=False))
    try:
        plan = platform.backtests.plan(request)
        run_id = new_run_id("run")
        with progress_bar() as progress:
            task = progress.add_task("back-testing", total=None)

            def step(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            summary = platform.backtests.run(plan, run_id, progress=step, log=console.print)
        kept = platform.backtests.report(run_id)
        if report is not None:
            report.write_text(json.dumps(kept, indent=2))
        if csv is not None:
            csv.write_text(to_csv(kept))
        print_json(summary)
    except LivetwinError as exc:
        fail(exc)
    finally:
        platform.close()
