"""The Grafana dashboard generator: panels per calibrated quantity with shaded bands, a twin
variable, alarms; its SQL runs on real PostgreSQL once Grafana's macros are expanded."""

from __future__ import annotations

import json
import os
import re
import uuid

import pytest
from conftest import PUMP, T0
from typer import Typer
from typer.testing import CliRunner

from livetwin.api.grafana import dashboard, quantities
from livetwin.cli.admin import grafana_dashboard
from livetwin.examples.rollers import DRAGS, ROLLER_TYPE, SPEEDS, TENSIONS
from livetwin.platform import Platform


def panels(board: dict, kind: str | None = None) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row" and kind in (None, p["type"])]


def by_title(board: dict) -> dict[str, dict]:
    return {p["title"]: p for p in panels(board)}


@pytest.fixture
def roller_info(platform):
    platform.put_type("roller_line", ROLLER_TYPE)
    return platform.get_type("roller_line")


def test_roller_dashboard_has_bands_measurements_alarms_and_a_twin_variable(roller_info):
    board = dashboard(roller_info)
    json.dumps(board)  # plain JSON
    assert board["uid"] == "livetwin-roller_line" and board["schemaVersion"] >= 36
    titled = by_title(board)
    assert set(DRAGS) | set(TENSIONS) | set(SPEEDS) <= set(titled)
    for name in (*DRAGS, *TENSIONS):  # calibrated parameters and virtual sensors: shaded bands
        panel = titled[name]
        assert panel["type"] == "timeseries"
        sql = panel["targets"][0]["rawSql"]
        assert f"name IN ('{name}', '{name}_lower', '{name}_upper')" in sql
        assert "FROM livetwin_samples" in sql and "type = 'roller_line'" in sql
        assert "$__timeFilter(ts)" in sql and "${twin:sqlstring}" in sql
        fills = {
            o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
            for o in panel["fieldConfig"]["overrides"]
        }
        assert fills[f"{name}_upper"]["custom.fillBelowTo"] == f"{name}_lower"
        assert fills[f"{name}_upper"]["custom.fillOpacity"] > 0
    for name in SPEEDS:  # measured model outputs, no band
        assert titled[name]["fieldConfig"]["overrides"] == []
        assert f"name IN ('{name}')" in titled[name]["targets"][0]["rawSql"]
    assert "brake_torque" not in titled  # a model input, not a measured output
    (alarms,) = panels(board, "table")
    assert alarms["targets"][0]["format"] == "table"
    assert "FROM livetwin_alarms" in alarms["targets"][0]["rawSql"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert "SELECT DISTINCT twin FROM livetwin_samples" in variables["twin"]["query"]
    # every panel uses the chosen data source; ids unique; no two panels overlap on the grid
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels(board))
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    cells = set()
    for p in board["panels"]:
        g = p["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, p["title"]
        assert g["x"] + g["w"] <= 24
        cells |= mine


def test_a_fixed_data_source_and_a_type_without_model(platform):
    platform.put_type("pump", PUMP)
    board = dashboard(platform.get_type("pump"), datasource_uid="pg-1")
    assert [v["name"] for v in board["templating"]["list"]] == ["twin"]
    assert {p["title"] for p in panels(board, "timeseries")} == {"flow", "pressure"}
    assert all(p["datasource"] == {"type": "grafana-postgresql-datasource", "uid": "pg-1"}
               for p in panels(board))  # fmt: skip


def test_bands_come_from_columns_when_the_model_cannot_be_loaded(roller_info):
    info = {**roller_info, "spec": {**roller_info["spec"], "model": {"ref": "nowhere:model"}}}
    found, loaded = quantities(info), quantities(roller_info)
    assert found.parameters == loaded.parameters == tuple(DRAGS)
    assert found.virtual == loaded.virtual and set(TENSIONS) <= set(found.virtual)
    assert loaded.measured == tuple(SPEEDS)
    assert set(found.measured) == {*SPEEDS, "brake_torque", "motor_torque"}  # all properties


def test_names_are_quoted_in_sql(platform):
    platform.put_type("pump", PUMP)
    info = platform.get_type("pump")
    board = dashboard({**info, "name": "o'neil"})
    assert "type = 'o''neil'" in panels(board)[0]["targets"][0]["rawSql"]


def _cli() -> Typer:
    app = Typer()
    app.command()(grafana_dashboard)
    return app


def test_cli_reads_the_type_from_a_data_directory(tmp_path):
    data = tmp_path / "d"
    with Platform(data) as p:
        p.put_type("roller_line", ROLLER_TYPE)
    out = tmp_path / "board.json"
    result = CliRunner().invoke(
        _cli(), ["roller_line", "--data", str(data), "-o", str(out), "--datasource-uid", "pg"]
    )
    assert result.exit_code == 0, result.output
    board = json.loads(out.read_text())
    assert {"b1", "T1", "w1"} <= set(by_title(board))
    missing = CliRunner().invoke(_cli(), ["valve", "--data", str(data)])
    assert missing.exit_code == 2 and "no twin type 'valve'" in missing.output


def test_cli_reads_the_type_from_a_running_server(platform, live_server):
    platform.put_type("roller_line", ROLLER_TYPE)
    result = CliRunner().invoke(_cli(), ["roller_line", "--url", live_server])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["title"] == "livetwin: roller_line"
    gone = CliRunner().invoke(_cli(), ["valve", "--url", live_server])
    assert gone.exit_code == 2 and "404" in gone.output and "fix:" in gone.output


# ---- the SQL against real PostgreSQL -----------------------------------------------------------


@pytest.fixture
def pg():
    psycopg = pytest.importorskip("psycopg")
    try:
        conn = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is needed under CI: {exc}")
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {exc}")
    with conn:  # all in one transaction, rolled back: the schema goes with it
        schema = f"lt_grafana_{uuid.uuid4().hex[:12]}"
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET LOCAL search_path = {schema}")
        conn.execute("CREATE TABLE livetwin_samples (twin text, type text, name text, "
                     "ts timestamptz, value double precision)")  # fmt: skip
        conn.execute(  # what the panels call (migrations/0002), here over the table above
            "CREATE FUNCTION livetwin_samples_between(t_from timestamptz, t_to timestamptz) "
            "RETURNS SETOF livetwin_samples LANGUAGE sql STABLE AS "
            "$$ SELECT * FROM livetwin_samples WHERE ts >= t_from AND ts < t_to $$"
        )
        conn.execute("CREATE TEMP TABLE alarms (twin text, type text, rule text, "
                     "severity text, state text, raised bigint, cleared bigint, "
                     "message text)")  # fmt: skip
        yield conn
        conn.rollback()


def grafana_expand(sql: str, twin: str) -> str:
    """Grafana's macros as its PostgreSQL data source expands them (1 minute interval)."""
    sql = sql.replace("$__timeGroupAlias(ts, $__interval)", "date_bin('60 s', ts, 'epoch') AS time")
    sql = sql.replace(
        "$__timeFilter(ts)", "ts BETWEEN '2026-11-22T09:00:00Z' AND '2026-11-22T11:00:00Z'"
    )
    sql = sql.replace(
        "$__timeFilter(to_timestamp(raised / 1000.0))",
        "to_timestamp(raised / 1000.0) BETWEEN '2026-11-22T09:00:00Z' AND now()",
    )
    sql = sql.replace("$__timeFrom()", "'2026-11-22T09:00:00Z'::timestamptz")
    sql = sql.replace("$__timeTo()", "'2026-11-22T11:00:00Z'::timestamptz")
    sql = sql.replace("${twin:sqlstring}", "'" + twin + "'")
    assert not re.search(r"\$\{?\w", sql), sql
    return sql


def test_the_generated_sql_runs_on_postgres(pg, roller_info):
    rows = [
        ("line-1", "roller_line", name, f"2026-11-22T10:00:{s:02d}Z", value)
        for s in range(0, 60, 10)
        for name, value in (("b1", 0.03), ("b1_lower", 0.02), ("b1_upper", 0.04), ("w1", 5.0))
    ] + [("line-2", "roller_line", "b1", "2026-11-22T10:00:00Z", 9.0)]
    with pg.cursor() as cur:
        cur.executemany("INSERT INTO livetwin_samples VALUES (%s,%s,%s,%s,%s)", rows)
        cur.execute(
            "INSERT INTO alarms VALUES ('line-1','roller_line','drag_high','warning',"
            "'active',1795341600000,NULL,'b1 above 0.035')"
        )
    board = dashboard(roller_info)
    titled = by_title(board)
    result = pg.execute(grafana_expand(titled["b1"]["targets"][0]["rawSql"], "line-1")).fetchall()
    assert {(metric, round(value, 3)) for _, metric, value in result} == {
        ("b1", 0.03),
        ("b1_lower", 0.02),
        ("b1_upper", 0.04),
    }
    measured = pg.execute(grafana_expand(titled["w1"]["targets"][0]["rawSql"], "line-1"))
    assert [m for _, m, _ in measured.fetchall()] == ["w1"]
    twin_query = {v["name"]: v for v in board["templating"]["list"]}["twin"]["query"]
    assert pg.execute(grafana_expand(twin_query, "")).fetchall() == [("line-1",), ("line-2",)]
    alarms_sql = panels(dashboard(roller_info, alarms_view="pg_temp.alarms"), "table")[0]
    (alarm,) = pg.execute(grafana_expand(alarms_sql["targets"][0]["rawSql"], "line-1")).fetchall()
    assert alarm[1:5] == ("line-1", "drag_high", "warning", "active")
    assert alarm[0].timestamp() * 1000 == 1795341600000


def test_panels_unpack_only_the_history_chunks_of_their_time_range(monkeypatch, tmp_path):
    """On a real store the panels call `livetwin_samples_between`, so PostgreSQL filters the
    history chunks by time (EXPLAIN) and a chunk outside the range never reaches the result."""
    from conftest import obs
    from postgres_support import fresh_schema, postgres_platform

    psycopg = pytest.importorskip("psycopg")
    with fresh_schema() as url:
        with postgres_platform(monkeypatch, tmp_path / "d", url) as platform:
            platform.put_type("roller_line", ROLLER_TYPE)
            for ts, w1 in ((T0 - 86_400_000, 1.0), (T0, 5.0)):  # a day before, and in range
                platform.ingest([obs("line-1", ts, type="roller_line", w1=w1)])
                platform.snapshot()  # flushes history: one chunk each
            board = dashboard(platform.get_type("roller_line"))
        sql = grafana_expand(by_title(board)["w1"]["targets"][0]["rawSql"], "line-1")
        assert "livetwin_samples_between(" in sql
        with psycopg.connect(url) as conn:
            assert [(m, v) for _, m, v in conn.execute(sql).fetchall()] == [("w1", 5.0)]
            plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql).fetchall())
        assert "ts_max" in plan and "ts_min" in plan, plan  # chunks filtered before unpacking
