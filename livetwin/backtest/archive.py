"""Where back-test reports are kept: the service's own database (`backtests`), one row per
run id, and a lineage node per run linking the journal range, the recorded type versions and
the candidate. A single node keeps its reports here; a cluster front end keeps the merged ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import orjson

from livetwin.backtest.report import summary

SCHEMA = """
CREATE TABLE IF NOT EXISTS backtests (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, created INTEGER NOT NULL, report TEXT NOT NULL
);
"""


class BacktestArchive:
    """Kept back-test reports (`open_db`: the service database opener) and their lineage nodes
    (`lineage`: a LineageStore, or None)."""

    def __init__(self, open_db: Callable, lineage: Any, clock: Callable):
        self.db = open_db("backtests", SCHEMA)
        self.lineage, self.clock = lineage, clock

    def close(self) -> None:
        self.db.close()

    def keep(self, run_id: str, args: dict, report: dict, started: int) -> dict:
        """Keep a report under `run_id` with a lineage node (`args`: the plan's); its summary."""
        report["id"] = run_id
        report["candidate"] = args["candidate"]
        report["twins"] = args.get("twins")
        body = orjson.dumps(report, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO backtests (id, type, created, report) VALUES (?,?,?,?)"
                " ON CONFLICT (id) DO UPDATE SET report = excluded.report",
                (run_id, args["type"], self.clock(), body),
            )
        report["lineage"] = self._lineage(run_id, args, report, started)
        return summary(report)

    def report(self, backtest_id: str) -> dict | None:
        """A kept report, or None."""
        row = (
            self.db.read()
            .execute("SELECT report FROM backtests WHERE id = ?", (backtest_id,))
            .fetchone()
        )
        return None if row is None else orjson.loads(row[0])

    def _lineage(self, run_id: str, args: dict, report: dict, started: int) -> str | None:
        """The run's node: parents are the journal range (from the report's `after_seq`: a
        cluster's report has one per shard), the recorded versions replayed and the
        candidate; its outputs the report's summary."""
        if self.lineage is None:
            return None
        name = args["type"]
        window = {
            "type": name, "from": args["from"], "to": args["to"], "after_seq": report["after_seq"]
        }  # fmt: skip
        digest = hashlib.sha256(orjson.dumps(window)).hexdigest()[:20]
        parents = [
            self.lineage.ensure(
                f"data:{name}/journal/{digest}", "data", f"{name} journal", inputs=window
            )
        ]
        for version in report["baseline_versions"]:
            parents.append(
                self.lineage.ensure(
                    f"type:{name}@{version}",
                    "model",
                    name,
                    inputs={"type": name, "version": version},
                )
            )
        spec = args["candidate"]["spec"]
        spec_hash = hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()
        parents.append(
            self.lineage.ensure(
                f"type:{name}@candidate-{spec_hash[:12]}",
                "model",
                f"{name} candidate",
                inputs={"type": name, "spec": spec},
                code_hash=spec_hash,
            )
        )
        return self.lineage.record(
            "run",
            f"backtest:{name}",
            id=run_id,
            inputs={"job": "backtest", **{k: v for k, v in args.items() if k != "candidate"}},
            outputs={**summary(report), "report": f"/api/backtests/{run_id}"},
            parents=parents,
            started=started,
            finished=self.clock(),
        )
