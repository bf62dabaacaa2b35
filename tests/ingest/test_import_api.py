"""The file routes over HTTP: stored mappings, multipart imports with their report and errors,
the Parquet export, and who may do what."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PUMP
from fastapi.testclient import TestClient

from livetwin.api.app import create_app
from livetwin.api.auth import install_auth

MAPPING = {"type": "pump", "twin": "p{id}", "ts_column": "time", "values": {"flow": "q"}}
CSV = b"id,time,q\n1,2026-11-22T10:00:00Z,5\n1,2026-11-22T10:01:00Z,6\n2,2026-11-22T10:00:00Z,x\n"


@pytest.fixture
def pumps(client, platform):
    platform.put_type("pump", PUMP)
    return client


def test_a_mapping_is_stored_by_name_and_a_file_imported_under_it(pumps):
    assert pumps.put("/api/mappings/plant", json=MAPPING).json()["twin"] == "p{id}"
    yaml = "type: pump\ntwin_column: id\nts_column: time\nvalues: {flow: q}\n"
    headers = {"content-type": "application/yaml"}
    assert pumps.put("/api/mappings/by-id", content=yaml, headers=headers).status_code == 200
    assert [m["name"] for m in pumps.get("/api/mappings").json()] == ["by-id", "plant"]
    response = pumps.post("/api/imports", files={"file": ("a.csv", CSV)}, data={"mapping": "plant"})
    assert response.status_code == 200
    report = response.json()
    assert (report["file"], report["rows"], report["accepted"]) == ("a.csv", 3, 2)
    assert report["rejected"] == [
        {
            "row": 3,
            "field": "q",
            "error": "non-numeric value 'x'",
            "fix": report["rejected"][0]["fix"],
        }
    ]
    again = pumps.post("/api/imports", files={"file": ("b.csv", CSV)}, data={"mapping": "plant"})
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 2)  # same bytes
    assert pumps.get("/api/twins/p1").json()["properties"]["flow"] == 6.0
    assert pumps.delete("/api/mappings/plant").json() == {"name": "plant", "deleted": True}
    assert pumps.get("/api/mappings/plant").status_code == 404


def test_a_mapping_may_come_with_the_upload(pumps):
    spec = "type: pump\ntwin: p{id}\nts_column: time\nvalues: {flow: q}\n"
    response = pumps.post(
        "/api/imports", files={"file": ("a.csv", CSV)}, data={"mapping_spec": spec}
    )
    assert response.status_code == 200 and response.json()["accepted"] == 2


@pytest.mark.parametrize(
    ("files", "data", "field"),
    [
        ({"file": ("a.csv", CSV)}, {}, "mapping"),  # no mapping
        ({"file": ("a.csv", CSV)}, {"mapping": "nope"}, "mapping"),  # unknown mapping: 404
        ({}, {"mapping": "plant"}, "file"),  # no file
        ({"file": ("a.xlsx", CSV)}, {"mapping": "plant"}, "file"),  # not what it says
        ({"file": ("a.dat", CSV)}, {"mapping": "plant"}, "format"),
        ({"file": ("a.csv", b"id,when,q\n1,2,3\n")}, {"mapping": "plant"}, "ts_column"),
        ({"file": ("a.csv", CSV)}, {"mapping_spec": "type: pump\nts_column: time\n"}, "twin"),
    ],
)
def test_bad_uploads_are_4xx_naming_the_field_and_store_nothing(
    pumps, platform, files, data, field
):
    pumps.put("/api/mappings/plant", json=MAPPING)
    response = pumps.post("/api/imports", files=files or {"other": ("x", b"")}, data=data)
    assert response.status_code in (404, 422), response.text
    error = response.json()["error"]
    assert error["field"] == field and error["fix"], error
    assert platform.stats()["journal_observations"] == 0


def test_every_row_rejected_is_a_422_with_the_report(pumps):
    pumps.put("/api/mappings/plant", json=MAPPING)
    bad = b"id,time,q\n1,2026-11-22T10:00:00Z,x\n"
    response = pumps.post("/api/imports", files={"file": ("a.csv", bad)}, data={"mapping": "plant"})
    assert response.status_code == 422
    assert response.json()["rejected_total"] == 1 and response.json()["accepted"] == 0


def test_a_file_over_the_limit_is_413(tmp_path, clock):
    from livetwin.platform import Platform, Settings

    settings = Settings(max_import_bytes=1000, webhooks=False, run_schedules=False)
    with Platform(tmp_path / "d", clock=clock, settings=settings) as p:
        p.put_type("pump", PUMP)
        p.put_mapping("plant", MAPPING)
        with TestClient(create_app(p)) as client:
            big = CSV + b"1,2026-11-22T10:02:00Z,7\n" * 100
            files = {"file": ("a.csv", big)}
            response = client.post("/api/imports", files=files, data={"mapping": "plant"})
        assert response.status_code == 413 and response.json()["error"]["field"] == "file"
        assert p.stats()["journal_observations"] == 0


def test_export_answers_parquet(pumps):
    pumps.put("/api/mappings/plant", json=MAPPING)
    pumps.post("/api/imports", files={"file": ("a.csv", CSV)}, data={"mapping": "plant"})
    response = pumps.get(
        "/api/types/pump/export", params={"from": "2026-11-22T10:01:00Z", "names": "flow"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(response.content))
    assert table.to_pydict() == {
        "twin": ["p1"],
        "ts": table.column("ts").to_pylist(),
        "flow": [6.0],
    }
    assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    assert pumps.get("/api/types/nope/export").status_code == 404
    bad = pumps.get("/api/types/pump/export", params={"from": "noon"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "from"


def test_declaring_a_mapping_needs_admin_and_importing_needs_write(platform):
    platform.put_type("pump", PUMP)
    app = create_app(platform)
    tokens = install_auth(app, platform, mode="tokens")
    with TestClient(app) as client:

        def bearer(scope):
            token = tokens.create(name=scope, scope=scope, namespace="*")["token"]
            return {"authorization": f"Bearer {token}"}

        assert (
            client.put("/api/mappings/m", json=MAPPING, headers=bearer("write")).status_code == 403
        )
        assert (
            client.put("/api/mappings/m", json=MAPPING, headers=bearer("admin")).status_code == 200
        )
        upload = {"files": {"file": ("a.csv", CSV)}, "data": {"mapping": "m"}}
        assert client.post("/api/imports", **upload, headers=bearer("read")).status_code == 403
        assert client.post("/api/imports", **upload, headers=bearer("write")).status_code == 200
        assert client.get("/api/types/pump/export", headers=bearer("read")).status_code == 200
        assert client.get("/api/types/pump/export").status_code == 401
