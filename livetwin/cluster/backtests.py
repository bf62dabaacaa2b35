"""Back-tests on a cluster: every shard involved checks the request against its own twins and
replays its own journal, all at once on the shards' nodes (`Shard.backtest`); the front end
merges their reports (`livetwin.backtest.merge`) and keeps the merged one in the cluster's
`<name>_backtests` schema with one lineage node, as a single node keeps its own. Offers what the
single node's routes (livetwin/api/backtests.py) and job (livetwin/jobs/backtest.py) call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livetwin.backtest.archive import BacktestArchive
from livetwin.backtest.merge import merge_reports
from livetwin.backtest.service import MAX_PLOT, EmptySelection

PLAN_TIMEOUT_S = 120.0  # a shard's check may load a snapshot (the retention check)


@dataclass(frozen=True)
class ClusterPlan:
    """A back-test request checked by the shards."""

    args: dict  # the request, normalised (what the job runs from)
    shards: list[int]  # the shards with twins in it


class ClusterBacktests:
    """Back-tests over the shards of a `ClusterFrontend` (see the module docstring)."""

    def __init__(self, frontend: Any):
        self.frontend = frontend
        self.archive = BacktestArchive(frontend.open_db, frontend.lineage, frontend.clock)

    def close(self) -> None:
        self.archive.close()

    def report(self, backtest_id: str) -> dict | None:
        """A kept (merged) report, or None."""
        return self.archive.report(backtest_id)

    def plan(self, body: Any) -> ClusterPlan:
        """The request checked by every shard it concerns, before any work: a shard's error
        (4xx naming the field) as is; a shard with no twin reporting in the window sits the
        back-test out, and that is an error only when every shard says so."""
        bodies = self._bodies(body)
        calls = {i: ("backtest_plan", part) for i, part in bodies.items()}
        answers = self.frontend.fan_out(calls, timeout=PLAN_TIMEOUT_S)
        taking = sorted(i for i, a in answers.items() if not isinstance(a, EmptySelection))
        if not taking:  # rather "not in the window" (some shard has the twins) than "no twins"
            raise min(answers.values(), key=lambda nothing: nothing.field == "twins")
        args = dict(answers[taking[0]])
        for key in ("twins", "plot"):  # as asked, not one shard's share
            if isinstance(body, dict) and body.get(key):
                args[key] = body[key]
        return ClusterPlan(args, taking)

    def run(
        self,
        plan: ClusterPlan,
        run_id: str,
        *,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        log: Callable[[str], None] = lambda _: None,
    ) -> dict:
        """Run the back-test on its shards at once, merge and keep the report under `run_id`
        with a lineage node; the summary. A lost shard's part runs again where Ray restarts it."""
        started = self.frontend.clock()
        bodies = self._bodies(plan.args)
        log(f"shards {', '.join(map(str, plan.shards))} replay their journals")
        parts = self.frontend.fan_out(
            {i: ("backtest", bodies[i], run_id) for i in plan.shards},
            job=run_id,
            progress=progress,
            cancelled=cancelled,
        )
        parts = {i: report for i, report in parts.items() if report is not None}
        if not parts:  # the twins left the window between the check and the run
            raise EmptySelection(
                "no shard has twins of the back-test left to replay",
                field="twins",
                fix="check the twin filter and the window",
            )
        report = merge_reports(parts, plot=plan.args.get("plot") or ())
        log(
            f"merged {len(parts)} shards' reports: {report['observations']['replayed']:,} "
            f"observations replayed, {len(report['outputs'])} outputs differ"
        )
        return self.archive.keep(run_id, plan.args, report, started)

    def _bodies(self, body: Any) -> dict[int, Any]:
        """Each shard's request: listed twin ids and plotted twins go to their own shards;
        a request without ids goes to every shard (each applies the filter to its twins)."""
        if not isinstance(body, dict):
            return {0: body}  # shard 0 answers what is wrong with it
        twins, plot = body.get("twins"), body.get("plot")
        ids = twins.get("ids") if isinstance(twins, dict) else None
        if _names(ids):
            own = self.frontend.by_shard(ids)
            bodies = {i: {**body, "twins": {**twins, "ids": part}} for i, part in own.items()}
        else:
            bodies = {i: dict(body) for i in range(self.frontend.shards.count)}
        if _names(plot) and len(plot) <= MAX_PLOT:  # longer: each shard refuses it as is
            plotted = self.frontend.by_shard(plot)
            for i, part in bodies.items():
                if plotted.get(i):
                    part["plot"] = plotted[i]
                else:
                    part.pop("plot", None)
        return bodies


def _names(value: Any) -> bool:
    """Whether `value` is a non-empty list of twin ids."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
