"""The built-in job `import`: imports the files that arrived in a folder under a stored mapping
and moves each to `done/` (something was stored, or everything was a duplicate) or `failed/`
(the file or the mapping was wrong, or every row was rejected), with its report beside it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from livetwin.errors import LivetwinError
from livetwin.jobs.baseline import check_keys
from livetwin.schedule.functions import RunContext

SETTLE_S = 2.0  # a file modified more recently may still be being written: the next run takes it


def import_job(import_file: Callable[..., dict]) -> Callable[[RunContext], dict]:
    """`import` job: args {folder, mapping, pattern?="*", settle_s?}. `import_file(path,
    mapping)` is the platform's entry (Platform.import_file)."""

    def run(ctx: RunContext) -> dict:
        check_keys(ctx.args, ("folder", "mapping", "pattern", "settle_s"), "import")
        folder, mapping = ctx.args.get("folder"), ctx.args.get("mapping")
        if not isinstance(folder, str) or not isinstance(mapping, str):
            raise ValueError("import needs args.folder (a directory) and args.mapping (a name)")
        root = Path(folder)
        if not root.is_dir():
            raise ValueError(f"args.folder {folder!r} is not a directory")
        settle = float(ctx.args.get("settle_s", SETTLE_S))
        now = time.time()
        files = sorted(
            p
            for p in root.glob(ctx.args.get("pattern", "*"))
            if p.is_file() and not p.name.startswith(".") and now - p.stat().st_mtime >= settle
        )
        done = []
        for path in files:
            try:
                report = import_file(path, mapping)
                ok = report["accepted"] or report["duplicates"] or not report["rejected_total"]
            except LivetwinError as exc:
                report, ok = {"file": path.name, "error": exc.to_dict()}, False
            where = _move(path, root / ("done" if ok else "failed"), report)
            ctx.log(f"{path.name}: {where.parent.name} ({_summary(report)})")
            done.append(
                {**{k: v for k, v in report.items() if k != "rejected"}, "moved": str(where)}
            )
        return {"folder": folder, "files": done}

    return run


def _move(path: Path, folder: Path, report: dict) -> Path:
    """Move a file into `folder` (a new name if taken) with its report as <name>.report.json."""
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    if target.exists():
        target = folder / f"{path.stem}.{time.time_ns()}{path.suffix}"
    path.rename(target)
    target.with_name(target.name + ".report.json").write_text(json.dumps(report, indent=2))
    return target


def _summary(report: dict) -> str:
    if "error" in report:
        return report["error"]["message"]
    return (
        f"{report['accepted']} accepted, {report['duplicates']} duplicates, "
        f"{report['rejected_total']} rejected"
    )
