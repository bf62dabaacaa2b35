"""`livetwin import` and `livetwin export`: the report alone on stdout, mistakes as one line
with a fix (exit status 2), on a data directory or through --url against a real server."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from conftest import PUMP
from typer.testing import CliRunner

from livetwin.cli import app
from livetwin.platform import Platform

MAPPING = "type: pump\ntwin: p{id}\nts_column: time\nvalues: {flow: q}\n"
CSV = "id,time,q\n1,2026-11-22T10:00:00Z,5\n2,2026-11-22T10:00:00Z,x\n"


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def files(tmp_path):
    (tmp_path / "map.yaml").write_text(MAPPING)
    (tmp_path / "a.csv").write_text(CSV)
    return str(tmp_path / "a.csv"), str(tmp_path / "map.yaml")


def test_import_then_export_on_a_data_directory(tmp_path):
    data = tmp_path / "d"
    with Platform(data) as p:
        p.put_type("pump", PUMP)
    csv, mapping = files(tmp_path)
    result = run("import", csv, "--mapping", mapping, "--data", str(data))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["accepted"], report["rejected"][0]["row"]) == (1, 2)
    again = json.loads(run("import", csv, "-m", mapping, "--data", str(data)).stdout)
    assert again["duplicates"] == 1
    out = tmp_path / "pump.parquet"
    result = run(
        "export", "pump", "-o", str(out), "--from", "2026-11-22T00:00:00Z", "--data", str(data)
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == 1
    assert pq.read_table(out).column("twin").to_pylist() == ["p1"]


def test_import_mistakes_are_one_line_with_a_fix(tmp_path):
    data = tmp_path / "d"
    with Platform(data) as p:
        p.put_type("pump", PUMP)
    csv, _ = files(tmp_path)
    (tmp_path / "bad.yaml").write_text(MAPPING.replace("q}", "flow_m3h}"))
    result = run("import", csv, "-m", str(tmp_path / "bad.yaml"), "--data", str(data))
    assert result.exit_code == 2, result.output
    assert "no column 'flow_m3h'" in result.output and "fix:" in result.output
    assert "Traceback" not in result.output and not result.stdout.strip().startswith("{")
    result = run("import", csv, "-m", "no-such-mapping", "--data", str(data))
    assert result.exit_code == 2 and "PUT /api/mappings/no-such-mapping" in result.output
    result = run("import", csv, "-m", str(tmp_path / "missing.yaml"), "--data", str(data))
    assert result.exit_code == 2 and "no mapping file" in result.output


def test_import_and_export_through_a_server(platform, live_server, tmp_path):
    platform.put_type("pump", PUMP)
    csv, mapping = files(tmp_path)
    result = run("import", csv, "-m", mapping, "--url", live_server)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accepted"] == 1
    out = tmp_path / "pump.parquet"
    assert run("export", "pump", "-o", str(out), "--url", live_server).exit_code == 0
    assert pq.read_table(out).num_rows == 1
