"""File import through the ingest path (CSV, JSON lines, Excel, Parquet) and Parquet export:
real files written by the test, read by pyarrow and openpyxl, stored by the real writer."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PUMP, T0

from livetwin.errors import InvalidInput
from livetwin.ingest.files.mapping import ImportMapping

WIDE = {
    "type": "pump",
    "twin": "pump-{id}",
    "ts_column": "time",
    "values": {"flow": "q", "pressure": "p"},
}


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def pumps(platform):
    platform.put_type("pump", PUMP)
    return platform


def test_csv_rows_become_observations_and_bad_rows_are_listed_with_their_reason(pumps, tmp_path):
    path = write(
        tmp_path,
        "pumps.csv",
        "id,time,q,p\n"
        "1,2026-11-22T10:00:00Z,90,3.2\n"
        "1,2026-11-22T10:01:00Z,lots,3.1\n"  # row 2: not a number
        "2,2026-11-22 10:00:00,5,\n"  # naive: UTC; an empty cell is an absent value
        "3,yesterday,1,2\n"  # row 4: not a timestamp
        "4,2026-11-22T10:00:00Z,-5,1\n"  # row 5: flow below its min
        "1,2026-11-22T10:02:00+01:00,96,3.0\n",
    )
    report = pumps.import_file(path, WIDE)
    assert (report["rows"], report["accepted"], report["duplicates"]) == (6, 3, 0)
    assert report["rejected_total"] == 3
    rejected = {r["row"]: r for r in report["rejected"]}
    assert set(rejected) == {2, 4, 5}
    assert rejected[2]["field"] == "q" and "lots" in rejected[2]["error"]
    assert rejected[4]["field"] == "time" and rejected[4]["fix"]
    assert rejected[5]["field"] == "q" and "outside the valid range" in rejected[5]["error"]
    history = pumps.history("pump-1", ["flow", "pressure"])
    assert history["ts"] == [T0 - 58 * 60_000, T0]  # 10:02+01:00 is 09:02Z
    assert history["series"] == {"flow": [96.0, 90.0], "pressure": [3.0, 3.2]}
    assert pumps.history("pump-2", ["pressure"])["series"]["pressure"] == [None]
    again = pumps.import_file(path, WIDE)  # the same file: its rows' keys are stored already
    assert (again["accepted"], again["duplicates"]) == (0, 3)
    assert pumps.stats()["journal_observations"] == 3


def test_offsets_and_time_zones_are_honoured(pumps, tmp_path):
    path = write(tmp_path, "tz.csv", "id,time,q\n1,22.11.2026 11:00,1\n1,22.11.2026 12:30,2\n")
    mapping = {**WIDE, "values": {"flow": "q"}, "ts_format": "%d.%m.%Y %H:%M"}
    pumps.import_file(path, {**mapping, "timezone": "Europe/Berlin"})
    assert pumps.history("pump-1", ["flow"])["ts"] == [T0, T0 + 90 * 60_000]


def test_long_layout_json_lines_with_a_type_column_and_renamed_names(pumps, tmp_path):
    pumps.put_type("valve", {"properties": {"opening": {}}})
    rows = [
        {"dev": "p1", "kind": "pump", "at": T0 // 1000, "signal": "Q", "v": 12.5},
        {"dev": "p1", "kind": "pump", "at": T0 // 1000, "signal": "P", "v": 3.0},
        {"dev": "v1", "kind": "valve", "at": T0 // 1000 + 60, "signal": "opening", "v": 0.4},
        {"dev": "v1", "kind": "valve", "at": T0 // 1000, "signal": "nope", "v": 1},
        {"dev": "x1", "kind": "boiler", "at": T0 // 1000, "signal": "t", "v": 1},
    ]
    path = write(tmp_path, "long.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    mapping = {
        "layout": "long",
        "twin_column": "dev",
        "type_column": "kind",
        "ts_column": "at",
        "ts_format": "epoch_s",
        "name_column": "signal",
        "value_column": "v",
        "names": {"Q": "flow", "P": "pressure"},
    }
    report = pumps.import_file(path, mapping)
    assert report["accepted"] == 3
    assert [(r["row"], r["field"]) for r in report["rejected"]] == [(4, "signal"), (5, "kind")]
    assert pumps.twin("p1")["properties"] == {"flow": 12.5, "pressure": 3.0}
    assert pumps.twin("v1")["properties"] == {"opening": 0.4}


def test_parquet_with_native_timestamps_and_a_constant_twin(pumps, tmp_path):
    table = pa.table(
        {
            "when": pa.array([T0, T0 + 60_000], pa.timestamp("ms", tz="UTC")),
            "flow": [1.0, 2.0],
        }
    )
    pq.write_table(table, tmp_path / "one.parquet")
    mapping = {"type": "pump", "twin": "pump-9", "ts_column": "when", "values": {"flow": "flow"}}
    assert pumps.import_file(tmp_path / "one.parquet", mapping)["accepted"] == 2
    assert pumps.history("pump-9", ["flow"])["ts"] == [T0, T0 + 60_000]


def test_excel_needs_a_sheet_name_when_it_has_several(pumps, tmp_path):
    from datetime import datetime

    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.title = "north"
    sheet.append(["id", "time", "q"])
    sheet.append([1, datetime(2026, 11, 22, 11, 0), 7.5])  # local time in Berlin
    book.create_sheet("south").append(["id", "time", "q"])
    book.save(tmp_path / "plant.xlsx")
    mapping = {**WIDE, "values": {"flow": "q"}, "timezone": "Europe/Berlin"}
    with pytest.raises(InvalidInput) as err:
        pumps.import_file(tmp_path / "plant.xlsx", mapping)
    assert err.value.field == "sheet" and "north, south" in err.value.message
    assert "sheet: north" in err.value.fix
    report = pumps.import_file(tmp_path / "plant.xlsx", {**mapping, "sheet": "north"})
    assert report["accepted"] == 1
    assert pumps.history("pump-1", ["flow"])["ts"] == [T0]  # 11:00 in Berlin is 10:00Z


def test_whole_file_mistakes_are_refused_before_anything_is_stored(pumps, tmp_path):
    csv = write(tmp_path, "a.csv", "id,time,q\n1,2026-11-22T10:00:00Z,1\n")
    with pytest.raises(InvalidInput) as err:  # a mapping naming a missing column
        pumps.import_file(csv, {**WIDE, "values": {"flow": "q", "pressure": "p"}})
    assert err.value.field == "values.pressure" and "'p'" in err.value.message
    assert "id, time, q" in err.value.message
    with pytest.raises(InvalidInput) as err:  # a timestamp format that reads none of them
        pumps.import_file(csv, {**WIDE, "values": {"flow": "q"}, "ts_format": "%d.%m.%Y"})
    assert err.value.field == "ts_format" and "2026-11-22T10:00:00Z" in err.value.message
    with pytest.raises(InvalidInput) as err:  # a property the type lacks
        pumps.import_file(csv, {**WIDE, "values": {"flw": "q"}})
    assert err.value.field == "values.flw"
    pq.write_table(pa.table({"a": [1]}), tmp_path / "really-parquet.csv")
    with pytest.raises(InvalidInput) as err:  # not what its extension says
        pumps.import_file(tmp_path / "really-parquet.csv", WIDE)
    assert err.value.field == "file" and "Parquet" in err.value.message
    with pytest.raises(InvalidInput) as err:
        pumps.import_file(write(tmp_path, "text.parquet", "id,time\n"), WIDE)
    assert err.value.field == "file" and "not Parquet" in err.value.message
    with pytest.raises(InvalidInput) as err:
        pumps.import_file(write(tmp_path, "text.xlsx", "id,time\n"), WIDE)
    assert "not an Excel workbook" in err.value.message
    assert pumps.stats()["journal_observations"] == 0


def test_mapping_mistakes_name_the_field():
    cases = [
        ({**WIDE, "twin_column": "id"}, "twin"),
        ({k: v for k, v in WIDE.items() if k != "type"}, "type"),
        ({**WIDE, "values": {}}, "values"),
        ({**WIDE, "ts_format": "dd.mm.yyyy"}, "ts_format"),
        ({**WIDE, "timezone": "Mars/Olympus"}, "timezone"),
        ({**WIDE, "layout": "long"}, "name_column"),
        ({**WIDE, "twin": "pump-{id!r}"}, "twin"),
        ({**WIDE, "colour": "red"}, "colour"),
    ]
    for spec, field in cases:
        with pytest.raises(InvalidInput) as err:
            ImportMapping.from_data(spec)
        assert err.value.field == field, (spec, err.value.message)


def test_the_answer_lists_the_first_100_rejected_rows_and_counts_the_rest(pumps, tmp_path):
    lines = [
        f"1,2026-11-22T10:{i // 60:02d}:{i % 60:02d}Z,{'x' if i % 2 else i}" for i in range(400)
    ]
    path = write(tmp_path, "many.csv", "id,time,q\n" + "\n".join(lines) + "\n")
    report = pumps.import_file(path, {**WIDE, "values": {"flow": "q"}})
    assert (report["accepted"], report["rejected_total"]) == (200, 200)
    assert [r["row"] for r in report["rejected"]] == list(range(2, 202, 2))


def test_a_stored_mapping_is_used_by_name(pumps, tmp_path):
    assert pumps.put_mapping("plant", WIDE)["twin"] == "pump-{id}"
    assert [m["name"] for m in pumps.list_mappings()] == ["plant"]
    path = write(tmp_path, "a.csv", "id,time,q,p\n1,2026-11-22T10:00:00Z,1,2\n")
    assert pumps.import_file(path, "plant")["accepted"] == 1
    pumps.delete_mapping("plant")
    with pytest.raises(Exception) as err:
        pumps.import_file(path, "plant")
    assert "PUT /api/mappings/plant" in err.value.fix


def test_export_writes_a_types_history_in_a_range_as_parquet(pumps, tmp_path):
    rows = "".join(f"{t},2026-11-22T10:0{m}:00Z,{m},1\n" for t in (1, 2) for m in range(5))
    pumps.import_file(write(tmp_path, "a.csv", "id,time,q,p\n" + rows), WIDE)
    out = tmp_path / "out.parquet"
    written = pumps.export(
        "pump", out, start="2026-11-22T10:01:00Z", end="2026-11-22T10:03:00Z", names=["flow"]
    )
    assert written["rows"] == 4 and written["twins"] == 2
    table = pq.read_table(out)
    assert table.column_names == ["twin", "ts", "flow"]
    assert table.column("twin").to_pylist() == ["pump-1", "pump-1", "pump-2", "pump-2"]
    assert table.column("flow").to_pylist() == [1.0, 2.0, 1.0, 2.0]
    assert table.column("ts").type == pa.timestamp("ms", tz="UTC")
    whole = pq.read_table(io.BytesIO(_export_bytes(pumps)))
    assert whole.num_rows == 10 and "power" in whole.column_names
    with pytest.raises(InvalidInput) as err:
        pumps.export("pump", tmp_path / "x.parquet", names=["nope"])
    assert err.value.field == "names"


def _export_bytes(platform) -> bytes:
    buffer = io.BytesIO()
    platform.export("pump", buffer)
    return buffer.getvalue()


def test_an_import_that_breaks_off_says_which_rows_are_stored(pumps, tmp_path, monkeypatch):
    """JSON lines whose column changes kind after the first block: pyarrow stops there."""
    from livetwin.ingest.files import readers

    monkeypatch.setattr(readers, "BLOCK_BYTES", 4096)
    rows = [{"id": 1, "time": T0 - 3_600_000 + i, "q": i} for i in range(300)]
    rows += [{"id": 1, "time": T0, "q": "lots"}] + rows[:5]
    path = write(tmp_path, "mixed.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    mapping = {**WIDE, "values": {"flow": "q"}, "ts_format": "epoch_ms"}
    with pytest.raises(InvalidInput) as err:
        pumps.import_file(path, mapping)
    stored = pumps.stats()["journal_observations"]
    assert 0 < stored < 300
    assert f"{stored} rows are stored" in err.value.message and "import it again" in err.value.fix
    assert err.value.details[0]["accepted"] == stored
