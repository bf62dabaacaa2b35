"""REST routes of back-tests: start one (a run of the scheduler's `backtest` function), read its
status and report (JSON or CSV), list them."""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from livetwin.api.body import read_body
from livetwin.api.openapi import error_response, request_body
from livetwin.api.params import Int64
from livetwin.backtest.report import to_csv
from livetwin.backtest.service import BacktestService
from livetwin.errors import NotFound
from livetwin.jobs.backtest import BACKTEST, queue_backtest
from livetwin.schedule import Scheduler
from livetwin.schedule.model import SYSTEM

MAX_BODY = 4 * 1024 * 1024
BACKTEST_BODY = request_body(
    {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["type", "candidate", "from", "to"],
                "properties": {
                    "type": {"type": "string"},
                    "candidate": {
                        "type": "object",
                        "description": '{"patch": {...}} or {"spec": {...}}',
                    },
                    "from": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                    "to": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                    "warmup": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                    "twins": {
                        "type": "object",
                        "properties": {
                            "ids": {"type": "array", "items": {"type": "string"}},
                            "parent": {"type": "string"},
                            "where": {"type": "string"},
                        },
                    },
                    "plot": {"type": "array", "items": {"type": "string"}},
                },
            },
            "example": {
                "type": "pump",
                "candidate": {"patch": {"derived": {"flow_avg": "avg(flow, '30m')"}}},
                "from": "2026-11-22T00:00:00Z",
                "to": "2026-11-23T00:00:00Z",
            },
        },
        "application/yaml": {"schema": {"type": "string"}},
    }
)


def backtest_routes(app: FastAPI, backtests: BacktestService, scheduler: Scheduler) -> None:
    """Add `/api/backtests` (POST, GET) and `/api/backtests/{id}`."""

    @app.post(
        "/api/backtests",
        tags=["backtests"],
        status_code=202,
        openapi_extra=BACKTEST_BODY,
        responses={404: error_response("`type` names no declared twin type")},
    )
    async def start_backtest(request: Request) -> dict:
        """Check a back-test against the live data (4xx naming the field before any work) and
        queue it as a run; poll `GET /api/backtests/{id}`."""
        body = await read_body(request, MAX_BODY)
        plan = await run_in_threadpool(backtests.plan, body)
        run = await run_in_threadpool(queue_backtest, scheduler, plan.args)
        return _status(run, None)

    @app.get("/api/backtests", tags=["backtests"])
    def list_backtests(limit: Int64 = Query(100)) -> list[dict]:
        """Back-test runs, newest first (their reports: GET /api/backtests/{id})."""
        runs = scheduler.runs(function=BACKTEST, namespace=SYSTEM, limit=limit)
        return [_status(run, None) for run in runs]

    @app.get("/api/backtests/{backtest_id}", tags=["backtests"])
    def get_backtest(backtest_id: str, format: Literal["json", "csv"] = "json"):
        """Status, progress and (once succeeded) the report; `?format=csv` gives the report's
        findings as CSV."""
        try:
            run = scheduler.run(backtest_id)
        except NotFound:  # a back-test run from the shell (livetwin backtest) keeps a report
            run = {"id": backtest_id, "function": BACKTEST, "namespace": SYSTEM}
            run["state"] = "succeeded" if backtests.report(backtest_id) else "unknown"
            if run["state"] == "unknown":
                raise
        if run["function"] != BACKTEST or run["namespace"] != SYSTEM:
            raise NotFound(
                f"run '{backtest_id}' is not a back-test",
                field="id",
                fix="list back-tests with GET /api/backtests",
            )
        report = backtests.report(backtest_id) if run["state"] == "succeeded" else None
        if format == "csv":
            if report is None:
                raise NotFound(
                    f"back-test '{backtest_id}' has no report ({run['state']})",
                    field="id",
                    fix="wait until its state is succeeded",
                )
            return Response(to_csv(report), media_type="text/csv")
        return _status(run, report)


def _status(run: dict, report: dict | None) -> dict:
    return {
        "id": run["id"],
        "state": run["state"],
        "progress": run.get("progress"),
        "error": run.get("error"),
        "args": run.get("args"),
        "created": run.get("created"),
        "finished": run.get("finished"),
        "logs": run.get("logs"),
        "report": report,
    }
