"""AAS submodels in and out through the BaSyx SDK: the sample submodel template (JSON, and as an
AASX package the test writes) imports with units from its concept descriptions, exports and
re-imports to the same type, flattened or with collections as child types; a twin exports as a
submodel instance; invalid files and unusable submodels are refused whole."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
from basyx.aas import model
from basyx.aas.adapter import aasx
from basyx.aas.adapter import json as aas_json
from conftest import T0

DATA = Path(__file__).parent / "data"
TEMPLATE_FILE = DATA / "pump-operation.aas.json"
SUBMODEL_ID = "https://example.com/ids/sm/PumpOperation"
AASX = "application/asset-administration-shell-package"


def _template() -> dict:
    return json.loads(TEMPLATE_FILE.read_text())


def _import(client, document, **params):
    return client.post("/api/types/import", json=document, params=params)


def _spec(client, name: str) -> dict:
    return client.get(f"/api/types/{name}").json()["spec"]


def _aasx_bytes() -> bytes:
    """The sample template inside an AASX package, with a shell that holds the submodel (and
    every concept description: `write_aas` keeps only those that model references reach)."""
    store = aas_json.read_aas_json_file(io.StringIO(TEMPLATE_FILE.read_text()), failsafe=False)
    shell = model.AssetAdministrationShell(
        model.AssetInformation(global_asset_id="https://example.com/assets/pump-1"),
        "https://example.com/ids/aas/pump-1",
        id_short="Pump1",
        submodel={model.ModelReference.from_referable(store.get_item(SUBMODEL_ID))},
    )
    store.add(shell)
    files = aasx.DictSupplementaryFileContainer()
    datasheet = store.get_item(SUBMODEL_ID).get_referable("Datasheet")
    datasheet.value = files.add_file(datasheet.value, io.BytesIO(b"%PDF-1.4\n"), "application/pdf")
    buffer = io.BytesIO()
    with aasx.AASXWriter(buffer) as writer:
        writer.write_all_aas_objects("/aasx/data.json", store, files, write_json=True)
    return buffer.getvalue()


def test_the_sample_template_imports_with_units_from_its_concept_descriptions(client):
    r = _import(client, _template())
    assert r.status_code == 200, r.text
    assert r.json()["types"] == [
        {"name": "PumpOperation", "version": 1, "changed": True, "source": SUBMODEL_ID}
    ]
    spec = _spec(client, "PumpOperation")
    properties = spec["properties"]
    assert {n: p["unit"] for n, p in properties.items()} == {
        "Flow": "m3/h",
        "Pressure": "bar",
        "Motor_Speed": "rpm",
        "Motor_Current": "A",  # from the element's own IEC 61360 data specification
        "Motor_Running": "",
        "Bearing_Temperature": "degC",
    }
    assert (properties["Pressure"]["min"], properties["Pressure"]["max"]) == (0.0, 16.0)  # Range
    assert properties["Flow"]["description"] == "volume flow"
    assert spec["parameters"]["RatedPower"]["value"] == 30.0  # category PARAMETER
    assert spec["parameters"]["RatedPower"]["unit"] == "kW"
    assert spec["source"]["version"] == "1.2"
    assert spec["source"]["elements"]["Motor.Speed"]["id"] == "0173-1#02-AAA004#001"
    assert spec["source"]["elements"]["Motor.Speed"]["datatype"] == "xs:int"
    reasons = {s["path"].partition("#")[2]: s["reason"] for s in r.json()["skipped"]}
    assert reasons == {
        "SerialNumber": "an xs:string value: livetwin holds numbers (and booleans as 1/0) only",
        "Manufacturer": "a MultiLanguageProperty element has no livetwin counterpart",
        "Datasheet": "a File element has no livetwin counterpart",
    }


@pytest.mark.parametrize("collections", ["flatten", "children"])
def test_import_export_reimport_gives_the_same_types(client, collections):
    first = _import(client, _template(), collections=collections).json()["types"]
    names = [t["name"] for t in first]
    before = {n: _spec(client, n) for n in names}
    exported = client.get("/api/types/PumpOperation", params={"format": "aas"})
    assert exported.status_code == 200, exported.text
    environment = exported.json()
    assert [s["id"] for s in environment["submodels"]] == [SUBMODEL_ID]
    assert environment["submodels"][0]["kind"] == "Template"
    again = _import(client, environment, collections=collections).json()
    assert [(t["name"], t["changed"]) for t in again["types"]] == [(n, False) for n in names]
    assert {n: _spec(client, n) for n in names} == before


def test_collections_can_become_child_types(client):
    result = _import(client, _template(), collections="children").json()
    assert [t["name"] for t in result["types"]] == [
        "PumpOperation",
        "PumpOperation_Motor",
        "PumpOperation_Bearing",
    ]
    parent = _spec(client, "PumpOperation")
    assert parent["children"] == ["PumpOperation_Motor", "PumpOperation_Bearing"]
    assert set(parent["properties"]) == {"Flow", "Pressure"}
    motor = _spec(client, "PumpOperation_Motor")
    assert motor["properties"]["Speed"]["unit"] == "rpm"


def test_an_aasx_package_imports_like_its_json(client):
    _import(client, _template())
    r = client.post("/api/types/import", content=_aasx_bytes(), headers={"content-type": AASX})
    assert r.status_code == 200, r.text
    assert r.json()["types"] == [
        {"name": "PumpOperation", "version": 1, "changed": False, "source": SUBMODEL_ID}
    ]


def test_a_broken_aasx_package_is_refused(client):
    broken = _aasx_bytes()[:400]
    r = client.post("/api/types/import", content=broken, headers={"content-type": AASX})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "body"
    assert "AASX" in r.json()["error"]["message"]


def test_a_twin_exports_as_a_submodel_instance(client):
    _import(client, _template())
    values = {"Flow": 42.5, "Pressure": 3.0, "Motor_Speed": 1450.4, "Motor_Running": True}
    client.post(
        "/api/ingest", json=[{"twin": "p/1", "type": "PumpOperation", "ts": T0, "values": values}]
    )
    r = client.get("/api/twins/p/1", params={"format": "aas"})
    assert r.status_code == 200, r.text
    submodel = r.json()["submodels"][0]
    assert submodel["id"] == f"{SUBMODEL_ID}/twins/p%2F1"
    assert submodel.get("kind", "Instance") == "Instance"  # the default, left out
    assert submodel["semanticId"]["keys"][0]["value"] == SUBMODEL_ID
    elements = {e["idShort"]: e for e in submodel["submodelElements"]}
    assert elements["Flow"]["value"] == "42.5"
    assert elements["Pressure"]["modelType"] == "Property"  # a value now, not a Range
    motor = {e["idShort"]: e for e in elements["Motor"]["value"]}
    assert (motor["Speed"]["valueType"], motor["Speed"]["value"]) == ("xs:int", "1450")
    assert motor["Running"]["value"] == "true"
    assert "value" not in motor["Current"]  # never reported
    assert elements["RatedPower"]["value"] == "30.0"
    # what the BaSyx SDK reads back is the same instance
    store = aas_json.read_aas_json_file(io.StringIO(json.dumps(r.json())), failsafe=False)
    assert store.get_item(submodel["id"]).get_referable("Flow").value == 42.5


def test_a_native_type_exports_as_a_template_with_units_and_bounds(client):
    client.put(
        "/api/types/tank",
        json={
            "properties": {"level": {"unit": "m", "min": 0, "max": 5}, "temp": {"unit": "degC"}},
            "parameters": {"area": {"value": 2.5, "unit": "m2"}},
            "derived": {"volume": {"expr": "level * area", "unit": "m3"}},
        },
    )
    environment = client.get("/api/types/tank?format=aas").json()
    submodel = environment["submodels"][0]
    assert submodel["id"] == "urn:livetwin:type:tank"
    elements = {e["idShort"]: e for e in submodel["submodelElements"]}
    assert elements["level"]["modelType"] == "Range"
    assert (elements["level"]["min"], elements["level"]["max"]) == ("0.0", "5.0")
    assert elements["area"]["category"] == "PARAMETER"
    assert elements["volume"]["description"][0]["text"] == "derived: level * area"
    again = _import(client, environment, prefix="copy_").json()["types"][0]
    copied = _spec(client, again["name"])
    assert copied["properties"]["temp"]["unit"] == "degC"
    assert copied["properties"]["level"]["max"] == 5.0
    assert copied["parameters"]["area"]["value"] == 2.5
    assert copied["properties"]["volume"]["unit"] == "m3"  # a derived value comes back measured


def test_a_newer_template_version_updates_the_same_type(client):
    _import(client, _template())
    newer = copy.deepcopy(_template())
    submodel = newer["submodels"][0]
    submodel["idShort"] = "PumpOperationV2"  # renamed: the id still names the same model
    submodel["administration"] = {"version": "2", "revision": "0"}
    submodel["submodelElements"].append(
        {"modelType": "Property", "idShort": "Vibration", "valueType": "xs:double"}
    )
    result = _import(client, newer).json()["types"]
    assert result == [
        {"name": "PumpOperation", "version": 2, "changed": True, "source": SUBMODEL_ID}
    ]
    assert "Vibration" in _spec(client, "PumpOperation")["properties"]


def test_an_invalid_environment_is_refused_by_the_schema_check(client):
    broken = _template()
    del broken["submodels"][0]["submodelElements"][0]["valueType"]
    r = _import(client, broken, format="aas")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "body"
    assert "not a valid AAS V3 environment" in r.json()["error"]["message"]
    assert client.get("/api/types").json() == []


def test_a_submodel_with_nothing_numeric_is_refused_with_what_was_skipped(client):
    document = {
        "submodels": [
            {
                "modelType": "Submodel",
                "id": "https://example.com/ids/sm/Nameplate",
                "idShort": "Nameplate",
                "submodelElements": [
                    {"modelType": "Property", "idShort": "Serial", "valueType": "xs:string"},
                    {"modelType": "Property", "idShort": "Built", "valueType": "xs:date"},
                ],
            }
        ]
    }
    r = _import(client, document)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["field"] == "submodels[0]"
    assert [d["path"] for d in error["details"]] == [
        "https://example.com/ids/sm/Nameplate#Serial",
        "https://example.com/ids/sm/Nameplate#Built",
    ]
    assert "xs:date" in error["details"][1]["reason"]


def test_a_name_clash_after_flattening_is_skipped_with_the_way_out(client):
    document = _template()
    document["submodels"][0]["submodelElements"].insert(
        0, {"modelType": "Property", "idShort": "Motor_Speed", "valueType": "xs:double"}
    )
    result = _import(client, document).json()
    clash = [s for s in result["skipped"] if "clashes" in s["reason"]]
    assert clash == [
        {
            "path": f"{SUBMODEL_ID}#Motor.Speed",
            "reason": "its name 'Motor_Speed' clashes with Motor_Speed after flattening",
        }
    ]
    children = _import(client, document, collections="children", prefix="c_").json()
    assert not [s for s in children["skipped"] if "clashes" in s["reason"]]


def test_an_unknown_collections_mode_is_a_422_naming_it(client):
    r = _import(client, _template(), collections="dotted")
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "collections"


def test_collections_nested_too_deep_are_skipped_not_recursed(client):
    inner: dict = {"modelType": "Property", "idShort": "Leaf", "valueType": "xs:double"}
    for level in range(40):
        inner = {"modelType": "SubmodelElementCollection", "idShort": f"C{level}", "value": [inner]}
    document = {
        "submodels": [
            {
                "modelType": "Submodel",
                "id": "https://example.com/ids/sm/Deep",
                "idShort": "Deep",
                "submodelElements": [
                    {"modelType": "Property", "idShort": "Flow", "valueType": "xs:double"},
                    inner,
                ],
            }
        ]
    }
    r = _import(client, document)
    assert r.status_code == 200, r.text
    [skipped] = r.json()["skipped"]
    assert skipped["reason"] == "collections nested deeper than 16 levels"
    assert list(_spec(client, "Deep")["properties"]) == ["Flow"]
    # as child types, a collection that holds only a collection would be a type of nothing
    shallow = copy.deepcopy(document)
    shallow["submodels"][0]["submodelElements"][1] = {
        "modelType": "SubmodelElementCollection",
        "idShort": "Outer",
        "value": [{"modelType": "SubmodelElementCollection", "idShort": "Inner", "value": []}],
    }
    r = _import(client, shallow, collections="children", prefix="c_")
    assert r.status_code == 422
    assert "nothing usable remains of https://example.com/ids/sm/Deep/Outer" in r.text
    assert client.get("/api/types/c_Deep").status_code == 404  # nothing half-imported
