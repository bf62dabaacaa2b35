"""The twin and type lifecycle over HTTP: POST /api/twins, PATCH and DELETE /api/twins/{id},
DELETE /api/types/{name}; text attributes returned with twins and usable in `where`."""

from __future__ import annotations

from conftest import T0, obs

VALVE = {
    "properties": {"flow": {}},
    "attributes": {"serial": "string", "mode": {"type": "enum", "values": ["auto", "manual"]}},
    "children": ["valve"],
}


def error(response) -> dict:
    return response.json()["error"]


def test_create_patch_and_delete_a_twin(client):
    assert client.put("/api/types/valve", json=VALVE).status_code == 200
    new = {"id": "plant/site", "type": "valve", "attributes": {"serial": "S-1"}}
    created = client.post("/api/twins", json=new)
    assert created.status_code == 201 and created.json()["created"] is True
    again = client.post("/api/twins", json=new)
    assert again.status_code == 409 and error(again)["field"] == "id"
    twin = client.get("/api/twins/plant/site").json()
    assert twin["attributes"] == {"serial": "S-1", "mode": None} and twin["updated"] is None

    client.post("/api/ingest", json=[obs("plant/v1", T0, "valve", flow=3.0)])
    patched = client.patch(
        "/api/twins/plant/v1", json={"attributes": {"mode": "auto"}, "parent": "plant/site"}
    )
    assert patched.status_code == 200, patched.text
    v1 = client.get("/api/twins/plant/v1").json()
    assert v1["parent"] == "plant/site" and v1["attributes"]["mode"] == "auto"
    listed = client.get("/api/twins", params={"type": "valve", "where": "mode == 'auto'"}).json()
    assert [t["id"] for t in listed["items"]] == ["plant/v1"]
    assert listed["items"][0]["attributes"] == {"serial": None, "mode": "auto"}

    bad = client.patch("/api/twins/plant/v1", json={"attributes": {"mode": "fast"}})
    assert bad.status_code == 422
    assert error(bad)["field"] == "attributes.mode" and "auto, manual" in error(bad)["fix"]
    assert client.patch("/api/twins/plant/v1", json={"colour": "red"}).status_code == 422
    assert client.patch("/api/twins/plant/none", json={"attributes": {}}).status_code == 404

    deleted = client.delete("/api/twins/plant/site", params={"purge": "true"})
    assert deleted.status_code == 200 and deleted.json()["purged"] is True
    assert client.get("/api/twins/plant/site").status_code == 404
    assert client.delete("/api/twins/plant/site").status_code == 404
    assert client.get("/api/twins/plant/v1").json()["parent"] is None


def test_create_twin_bad_input(client):
    client.put("/api/types/valve", json=VALVE)
    cases = [
        ({"id": "x", "type": "nope"}, 404, "type"),
        ({"id": "x"}, 422, "type"),
        ({"id": "x\u0001", "type": "valve"}, 422, "id"),
        ({"id": "x", "type": "valve", "attributes": {"mode": 3}}, 422, "attributes.mode"),
        ({"id": "x", "type": "valve", "parent": "missing"}, 422, "parent"),
    ]
    for body, status, field in cases:
        response = client.post("/api/twins", json=body)
        assert response.status_code == status, (body, response.text)
        assert error(response)["field"] == field, body
        assert error(response)["fix"]


def test_delete_type_is_409_while_twins_exist_unless_cascade(client):
    client.put("/api/types/valve", json=VALVE)
    client.post("/api/ingest", json=[obs("v1", T0, "valve", flow=1.0)])
    refused = client.delete("/api/types/valve")
    assert refused.status_code == 409 and "cascade=true" in error(refused)["fix"]
    done = client.delete("/api/types/valve", params={"cascade": "true"})
    assert done.status_code == 200 and done.json()["removed"] == ["v1"]
    assert client.get("/api/types/valve").status_code == 404
    assert client.get("/api/twins/v1").status_code == 404
    assert client.delete("/api/types/valve").status_code == 404


def test_new_routes_are_in_the_openapi_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/api/twins"] and "requestBody" in paths["/api/twins"]["post"]
    assert {"patch", "delete"} <= set(paths["/api/twins/{twin_id}"])
    assert "delete" in paths["/api/types/{name}"]
