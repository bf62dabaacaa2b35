"""DTDL interfaces in and out: the sample interfaces import as livetwin types (extends flattened,
Objects one level deep, components and relationships as children, what cannot be held skipped
with the reason), export as DTDL and re-import to the same type; a newer model version updates
the same type; bad files are refused whole, naming the element and the fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import T0
from typer.testing import CliRunner

from livetwin.cli import app as cli

DATA = Path(__file__).parent / "data"
PUMP_FILE = DATA / "pump.dtdl.json"
THERMOSTAT_FILE = DATA / "thermostat.v2.dtdl.json"


def _load(path: Path):
    return json.loads(path.read_text())


def _import(client, document, **params):
    return client.post("/api/types/import", json=document, params=params)


def _spec(client, name: str, version: int | None = None) -> dict:
    params = {"version": version} if version else {}
    return client.get(f"/api/types/{name}", params=params).json()["spec"]


def test_the_sample_interfaces_import_as_types_with_what_was_skipped_and_why(client):
    r = _import(client, _load(PUMP_FILE))
    assert r.status_code == 200, r.text
    result = r.json()
    assert [(t["name"], t["version"]) for t in result["types"]] == [
        ("Device", 1),
        ("Pump", 1),
        ("Motor", 1),
    ]
    pump = _spec(client, "Pump")
    assert pump["description"] == "A centrifugal pump"
    assert {n: p["unit"] for n, p in pump["properties"].items()} == {
        "uptime": "s",  # from the Device it extends
        "flow": "m3/h",
        "pressure": "bar",
        "suction": "inchesOfWater",  # a DTDL unit livetwin's table lacks keeps its name
        "bearing_temp": "degC",  # a field of the Object telemetry
        "bearing_vibration": "",
        "running": "",  # a boolean: 1/0
        "runHours": "h",  # a read-only property: the device reports it
        "alarmLevel": "",  # an integer Enum
    }
    assert pump["parameters"]["targetSpeed"]["unit"] == "rpm"  # a writable property
    assert pump["parameters"]["targetSpeed"]["value"] == 0.0  # DTDL declares no start value
    assert pump["children"] == ["Motor", "Tank"]  # a component and a relationship's target
    assert pump["source"]["id"] == "dtmi:com:example:Pump;1"
    assert pump["source"]["elements"]["bearing.temp"]["name"] == "bearing_temp"
    assert pump["source"]["elements"]["motor"] == {
        "name": "Motor",
        "kind": "Component",
        "id": "dtmi:com:example:Motor;1",
        "datatype": "",
        "semantic_type": "",
    }
    reasons = {s["path"]: s["reason"] for s in result["skipped"]}
    assert "string value" in reasons["dtmi:com:example:Pump;1#firmwareVersion"]
    assert "nested in an Object" in reasons["dtmi:com:example:Pump;1#bearing.spectrum"]
    assert "string Enum" in reasons["dtmi:com:example:Pump;1#mode"]
    assert "Map schema" in reasons["dtmi:com:example:Pump;1#settings"]
    assert "commands" in reasons["dtmi:com:example:Pump;1#reset"]
    motor = _spec(client, "Motor")
    assert set(motor["properties"]) == {"current", "speed"}
    assert set(motor["parameters"]) == {"maxCurrent"}


@pytest.mark.parametrize("path", [PUMP_FILE, THERMOSTAT_FILE], ids=["v3", "v2"])
def test_import_export_reimport_gives_the_same_types(client, path):
    first = _import(client, _load(path)).json()["types"]
    names = [t["name"] for t in first]
    before = {n: _spec(client, n) for n in names}
    exported = []
    for name in names:
        r = client.get(f"/api/types/{name}", params={"format": "dtdl"})
        assert r.status_code == 200, r.text
        assert r.json()["@context"][0] == "dtmi:dtdl:context;3"
        exported.append(r.json())
    again = _import(client, exported).json()
    assert [(t["name"], t["changed"]) for t in again["types"]] == [(n, False) for n in names]
    assert again["skipped"] == []
    assert {n: _spec(client, n) for n in names} == before


def test_the_export_says_what_each_name_is(client):
    _import(client, _load(THERMOSTAT_FILE))
    client.put(
        "/api/types/Thermostat",
        json={**_spec(client, "Thermostat"), "derived": {"too_hot": "temperature > 30"}},
    )
    interface = client.get("/api/types/Thermostat?format=dtdl").json()
    by_name = {c["name"]: c for c in interface["contents"]}
    assert interface["@id"] == "dtmi:com:example:Thermostat;1"
    assert by_name["temperature"]["@type"] == ["Telemetry", "Temperature"]
    assert by_name["temperature"]["unit"] == "degreeCelsius"
    assert by_name["targetTemperature"]["writable"] is True
    assert by_name["maxTempSinceLastReboot"]["@type"][0] == "Property"
    assert by_name["maxTempSinceLastReboot"]["writable"] is False
    assert by_name["too_hot"] == {
        "@type": "Property",
        "name": "too_hot",
        "schema": "double",
        "description": "derived: temperature > 30",
        "writable": False,
    }


def test_a_native_type_exports_with_a_livetwin_dtmi_and_its_children_as_relationships(client):
    client.put("/api/types/room", json={"properties": {"temp": {"unit": "degC"}}})
    client.put(
        "/api/types/floor-2",
        json={
            "properties": {"occupancy": {}},
            "parameters": {"k": {"value": 2}},
            "children": ["room"],
        },
    )
    interface = client.get("/api/types/floor-2?format=dtdl").json()
    assert interface["@id"] == "dtmi:livetwin:floor_2;1"
    contents = {c["name"]: c for c in interface["contents"]}
    assert contents["has_room"] == {
        "@type": "Relationship",
        "name": "has_room",
        "target": "dtmi:livetwin:room;1",
    }
    assert contents["k"]["writable"] is True
    assert contents["occupancy"]["@type"] == "Telemetry"


def test_a_newer_model_version_updates_the_same_type(client):
    document = _load(THERMOSTAT_FILE)
    _import(client, document)
    client.post(
        "/api/ingest",
        json=[{"twin": "t-1", "type": "Thermostat", "ts": T0, "values": {"temperature": 21.5}}],
    )
    newer = copy.deepcopy(document)
    newer["@id"] = "dtmi:com:example:Thermostat;2"
    newer["contents"].append({"@type": "Telemetry", "name": "humidity", "schema": "double"})
    result = _import(client, newer).json()
    assert result["types"] == [
        {"name": "Thermostat", "version": 2, "changed": True, "source": newer["@id"]}
    ]
    assert "humidity" in _spec(client, "Thermostat")["properties"]
    twin = client.get("/api/twins/t-1").json()
    assert twin["version"] == 2 and twin["properties"]["temperature"] == 21.5


def test_a_twin_exports_as_azure_digital_twins_json(client):
    _import(client, _load(THERMOSTAT_FILE))
    client.post(
        "/api/ingest",
        json=[
            {
                "twin": "t-1",
                "type": "Thermostat",
                "ts": T0,
                "values": {"temperature": 21.5, "targetTemperature": 22},
            }
        ],
    )
    twin = client.get("/api/twins/t-1", params={"format": "dtdl"}).json()
    assert twin["$dtId"] == "t-1"
    assert twin["$etag"].startswith('W/"')
    assert twin["temperature"] == 21.5 and twin["targetTemperature"] == 22.0
    assert "maxTempSinceLastReboot" not in twin  # never reported: no value to show
    assert twin["$metadata"]["$model"] == "dtmi:com:example:Thermostat;1"
    assert twin["$metadata"]["$lastUpdateTime"] == "2026-11-22T10:00:00.000Z"
    assert twin["$metadata"]["temperature"] == {"lastUpdateTime": "2026-11-22T10:00:00.000Z"}


def _interface(contents: list, dtmi: str = "dtmi:com:example:Bad;1") -> dict:
    return {
        "@context": "dtmi:dtdl:context;3",
        "@id": dtmi,
        "@type": "Interface",
        "contents": contents,
    }


TELEMETRY = {"@type": "Telemetry", "name": "flow", "schema": "double"}


@pytest.mark.parametrize(
    "document, field",
    [
        ({"@id": "dtmi:com:example:Bad;1", "@type": "Interface"}, "body.@context"),
        (_interface([TELEMETRY], dtmi="urn:not-a-dtmi"), "body.@id"),
        ({**_interface([TELEMETRY]), "@type": "Telemetry"}, "body.@type"),
        (_interface([{"@type": "Telemetry", "schema": "double"}]), "body.contents[0].name"),
        (_interface([{"@type": "Sensor", "name": "x"}]), "body.contents[0].@type"),
        (_interface([{"@type": "Telemetry", "name": "x"}]), "body.contents[0].schema"),
        (
            _interface([{**TELEMETRY, "schema": "dtmi:com:example:Nowhere;1"}]),
            "body.contents[0].schema",
        ),
        ({**_interface([TELEMETRY]), "extends": "dtmi:com:example:Base;1"}, "body.extends"),
        ([_interface([TELEMETRY]), "not an interface"], "body"),
        (_interface([{**TELEMETRY, "unit": ["bar"]}]), "dtmi:com:example:Bad;1#flow.unit"),
    ],
    ids=[
        "no context",
        "bad id",
        "not an interface",
        "no name",
        "unknown kind",
        "no schema",
        "unknown schema",
        "extends outside the file",
        "not all objects",
        "unit not a name",
    ],
)
def test_a_file_that_is_not_dtdl_is_refused_naming_the_element(client, document, field):
    r = _import(client, document, format="dtdl")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert r.json()["error"]["fix"]
    assert client.get("/api/types").json() == []


def test_nothing_half_imported_when_one_interface_has_nothing_usable(client):
    usable = _interface([TELEMETRY], dtmi="dtmi:com:example:Good;1")
    text_only = _interface([{"@type": "Telemetry", "name": "label", "schema": "string"}])
    r = _import(client, [usable, text_only])
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["field"] == "[1]"
    assert "nothing usable remains of dtmi:com:example:Bad;1" in error["message"]
    assert error["details"] == [
        {
            "path": "dtmi:com:example:Bad;1#label",
            "reason": "a string value: livetwin holds numbers (and booleans as 1/0) only",
        }
    ]
    assert client.get("/api/types").json() == []


def test_a_name_clash_after_flattening_skips_the_later_element(client):
    bearing = {
        "@type": "Telemetry",
        "name": "bearing",
        "schema": {"@type": "Object", "fields": [{"name": "temp", "schema": "double"}]},
    }
    document = _interface([{**TELEMETRY, "name": "bearing_temp"}, bearing])
    result = _import(client, document).json()
    assert result["skipped"] == [
        {
            "path": "dtmi:com:example:Bad;1#bearing.temp",
            "reason": "its name 'bearing_temp' clashes with bearing_temp after flattening",
        }
    ]
    assert list(_spec(client, "Bad")["properties"]) == ["bearing_temp"]


def test_a_hand_declared_type_of_the_same_name_is_a_conflict_until_a_prefix_is_given(client):
    client.put("/api/types/Thermostat", json={"properties": {"t": {}}})
    r = _import(client, _load(THERMOSTAT_FILE))
    assert r.status_code == 409
    assert r.json()["error"]["field"] == "body.name"
    assert "prefix" in r.json()["error"]["fix"]
    r = _import(client, _load(THERMOSTAT_FILE), prefix="acme_")
    assert r.json()["types"][0]["name"] == "acme_Thermostat"
    assert list(_spec(client, "Thermostat")["properties"]) == ["t"]  # untouched


def test_a_body_that_is_neither_standard_says_how_to_name_the_format(client):
    r = _import(client, {"properties": {"flow": {}}})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "format"


def test_the_cli_imports_a_file_and_prints_the_result(tmp_path):
    data = tmp_path / "data"
    result = CliRunner().invoke(cli, ["types", "import", str(PUMP_FILE), "--data", str(data)])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert [t["name"] for t in answer["types"]] == ["Device", "Pump", "Motor"]
    assert "skipped dtmi:com:example:Pump;1#reset" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"@context": "dtmi:dtdl:context;3", "@type": "Interface"}')
    result = CliRunner().invoke(cli, ["types", "import", str(bad), "--data", str(data)])
    assert result.exit_code == 2
    assert "is not a DTMI" in result.stderr and "fix:" in result.stderr


def _chain(depth: int) -> list[dict]:
    """Interfaces I0 <- I1 <- ... each extending the one before, with one telemetry each."""
    out = []
    for i in range(depth):
        interface = _interface([{**TELEMETRY, "name": f"t{i}"}], dtmi=f"dtmi:com:example:I{i};1")
        if i:
            interface["extends"] = f"dtmi:com:example:I{i - 1};1"
        out.append(interface)
    return out


def test_extends_is_flattened_once_per_base_within_dtdl_depth_limit(client):
    diamond = _chain(2) + [
        {
            **_interface([], dtmi="dtmi:com:example:Both;1"),
            "extends": ["dtmi:com:example:I1;1", "dtmi:com:example:I0;1"],
        }
    ]
    result = _import(client, diamond).json()
    assert result["skipped"] == []  # I0 reached twice, included once
    assert list(_spec(client, "Both")["properties"]) == ["t0", "t1"]
    r = _import(client, _chain(12), prefix="deep_")
    assert r.status_code == 422
    assert "limit of 10 levels" in r.json()["error"]["message"]
    cycle = _chain(2)
    cycle[0]["extends"] = "dtmi:com:example:I1;1"
    r = _import(client, cycle, prefix="cycle_")
    assert r.status_code == 422
    assert "extends itself" in r.json()["error"]["message"]


def test_a_type_declared_by_hand_is_stored_as_before_and_put_back_keeps_its_source(client):
    client.put("/api/types/boiler", json={"properties": {"temp": {}}})
    assert "source" not in _spec(client, "boiler")  # stored exactly as before `source` existed
    _import(client, _load(THERMOSTAT_FILE))
    spec = _spec(client, "Thermostat")
    again = client.put("/api/types/Thermostat", json=spec).json()
    assert again["changed"] is False  # what GET returned, put back, is the same type
