"""Durable workflows: each finished task's value, kept in the service database `workflows`
(`<data>/workflows.db`, or its PostgreSQL schema), so a workflow run interrupted by a crash or a
lost node resumes from its last finished task instead of starting over.

A task call is keyed by its workflow run id and its step: the task's name and how many calls of
that task the run made before it (`fit#0`, `fit#1`, ...). The workflow body runs again on
resume; a call whose step has a kept value returns that value at once, without running the task
again, so the body must submit its tasks in the same order given the same values (as in Temporal
or DBOS). Values are pickled: the database is the deployment's own, never user input.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

from livetwin.ports import OpenServiceDB

log = logging.getLogger(__name__)

__all__ = ["WorkflowStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS task_results (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    value BLOB NOT NULL,
    node TEXT,
    finished INTEGER NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE INDEX IF NOT EXISTS task_results_finished ON task_results (finished);
"""


class WorkflowStore:
    """The finished tasks of workflow runs, by run id and step."""

    def __init__(self, open_db: OpenServiceDB, *, retention_ms: int = 7 * 86_400_000):
        self.db = open_db("workflows", SCHEMA)
        self.retention_ms = retention_ms

    def load(self, run_id: str) -> dict[str, tuple[Any, str | None]]:
        """step -> (value, lineage node) of the tasks run `run_id` finished already."""
        rows = self.db.read().execute(
            "SELECT step, value, node FROM task_results WHERE run_id=?", (run_id,)
        )
        return {step: (pickle.loads(bytes(value)), node) for step, value, node in rows}

    def save(self, run_id: str, step: str, value: Any, node: str | None, now: int) -> bool:
        """Keep a finished task's value (committed before the task counts as done); False, with
        a warning, for a value that does not pickle: that task runs again on resume."""
        try:
            blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            log.warning("the value of %s in run %s is not kept (%s)", step, run_id, exc)
            return False
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO task_results (run_id, step, value, node, finished) "
                "VALUES (?,?,?,?,?) ON CONFLICT (run_id, step) DO NOTHING",
                (run_id, step, blob, node, now),
            )
            conn.execute("DELETE FROM task_results WHERE finished < ?", (now - self.retention_ms,))
        return True

    def close(self) -> None:
        self.db.close()
