"""The scenario service's tables (`<data>/scenarios.db` or its PostgreSQL schema): one row per
scenario (request, status, progress, summary) and its forecast series per twin. Nothing here is
live history: a scenario's results live under its id only."""

from __future__ import annotations

import io

import numpy as np
import orjson

from livetwin.errors import NotFound
from livetwin.store.servicedb import ServiceDB
from livetwin.timefmt import format_ts

SCHEMA = """
CREATE TABLE IF NOT EXISTS scenarios (
    id TEXT PRIMARY KEY,
    run TEXT,
    name TEXT NOT NULL,
    status TEXT NOT NULL,         -- queued | running | succeeded | failed
    progress REAL NOT NULL,
    created INTEGER NOT NULL,
    started INTEGER,
    finished INTEGER,
    request TEXT NOT NULL,        -- JSON: the body as posted
    summary TEXT,                 -- JSON: per twin start, differences and alarms
    error TEXT
);
CREATE TABLE IF NOT EXISTS scenario_series (
    scenario TEXT NOT NULL,
    twin TEXT NOT NULL,
    position INTEGER NOT NULL,
    data BLOB NOT NULL,           -- np.save of float64 [side, point, column]
    PRIMARY KEY (scenario, twin)
);
"""

COLUMNS = "id, run, name, status, progress, created, started, finished, request, summary, error"


class ScenarioStore:
    """Every SQL statement on the scenario tables."""

    def __init__(self, db: ServiceDB):
        self.db = db

    def close(self) -> None:
        self.db.close()

    def create(self, scenario_id: str, name: str, request: dict, now: int) -> None:
        with self.db.write() as conn:
            conn.execute(
                f"INSERT INTO scenarios ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (scenario_id, None, name, "queued", 0.0, now, None, None,
                 orjson.dumps(request).decode(), None, None),
            )  # fmt: skip

    def set_run(self, scenario_id: str, run: str) -> None:
        self._update(scenario_id, "run = ?", run)

    def started(self, scenario_id: str, now: int) -> None:
        self._update(scenario_id, "status = 'running', started = ?, progress = 0", now)

    def progress(self, scenario_id: str, share: float) -> None:
        self._update(scenario_id, "progress = ?", round(float(share), 4))

    def failed(self, scenario_id: str, error: str, now: int) -> None:
        self._update(scenario_id, "status = 'failed', error = ?, finished = ?", error, now)

    def succeeded(
        self, scenario_id: str, summary: dict, series: dict[str, np.ndarray], now: int
    ) -> None:
        """The summary and every twin's series, in one transaction."""
        rows = [(scenario_id, twin, i, _blob(a)) for i, (twin, a) in enumerate(series.items())]
        with self.db.write() as conn:
            conn.execute("DELETE FROM scenario_series WHERE scenario = ?", (scenario_id,))
            conn.executemany(
                "INSERT INTO scenario_series (scenario, twin, position, data) VALUES (?,?,?,?)",
                rows,
            )
            conn.execute(
                "UPDATE scenarios SET status = 'succeeded', progress = 1, summary = ?, "
                "finished = ? WHERE id = ?",
                (orjson.dumps(summary).decode(), now, scenario_id),
            )

    def _update(self, scenario_id: str, assignments: str, *args) -> None:
        with self.db.write() as conn:
            conn.execute(f"UPDATE scenarios SET {assignments} WHERE id = ?", (*args, scenario_id))

    def get(self, scenario_id: str) -> dict:
        row = (
            self.db.read()
            .execute(f"SELECT {COLUMNS} FROM scenarios WHERE id = ?", (scenario_id,))
            .fetchone()
        )
        if row is None:
            raise NotFound(
                f"no scenario '{scenario_id}'",
                field="id",
                fix="use an id from POST /api/scenarios or GET /api/scenarios",
            )
        return _record(row)

    def delete(self, scenario_id: str) -> None:
        """Remove a scenario and its series."""
        with self.db.write() as conn:
            conn.execute("DELETE FROM scenario_series WHERE scenario = ?", (scenario_id,))
            conn.execute("DELETE FROM scenarios WHERE id = ?", (scenario_id,))

    def list(self, limit: int) -> list[dict]:
        rows = (
            self.db.read()
            .execute(
                f"SELECT {COLUMNS} FROM scenarios ORDER BY created DESC, id DESC LIMIT ?", (limit,)
            )
            .fetchall()
        )
        return [_record(row, summary=False) for row in rows]

    def series(self, scenario_id: str, twins: list[str] | None, limit: int) -> dict:
        """twin -> float64 [side, point, column], for `twins` (default: the first `limit`)."""
        read = self.db.read()
        if twins is None:
            rows = read.execute(
                "SELECT twin, data FROM scenario_series WHERE scenario = ? "
                "ORDER BY position LIMIT ?",
                (scenario_id, limit),
            ).fetchall()
        else:
            marks = ",".join("?" * len(twins))
            rows = read.execute(
                f"SELECT twin, data FROM scenario_series WHERE scenario = ? AND twin IN ({marks})",
                (scenario_id, *twins),
            ).fetchall()
        return {twin: np.load(io.BytesIO(bytes(data)), allow_pickle=False) for twin, data in rows}


def _blob(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float64), allow_pickle=False)
    return buffer.getvalue()


def _record(row: tuple, summary: bool = True) -> dict:
    sid, run, name, status, progress, created, started, finished, request, summ, error = row
    out = {
        "id": sid,
        "run": run,
        "name": name,
        "status": status,
        "progress": progress,
        "created": format_ts(created),
        "started": None if started is None else format_ts(started),
        "finished": None if finished is None else format_ts(finished),
        "error": error,
        "request": orjson.loads(request),
    }
    if summary:
        out["summary"] = None if summ is None else orjson.loads(summ)
    return out
